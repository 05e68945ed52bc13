"""Memory and CPU of a process tree (a driver and the Ray cluster it started), for the benchmarks.

One sampler shared by bench_build.py, bench_eval_memory.py and bench_serve.py. On a local cluster
every Ray process (gcs_server, raylet, the workers and actors under the raylet, the agents) is a
descendant of the driver that called ``ray.init``, so the driver's tree is the whole cluster.

API (stable; the benchmarks import it from ``benchmarks/`` as ``import proc_tree``):

    tree(root=None) -> list[psutil.Process]
        ``root`` (a pid or psutil.Process; default this process) followed by all its descendants.
    kind(proc) -> str
        What a process is: a Ray worker's title without ``ray::`` ("ServeReplica:app:YingModel",
        "ProxyActor", "IDLE", "DashboardAgent", an actor class or task name), the script of a Python
        helper ("log_monitor", "monitor", "dashboard"), else the executable ("raylet", "gcs_server").
        "" when the process is gone.
    cpu_seconds(procs) -> dict[int, float]
        user + system CPU seconds of each live process, by pid.
    rss_bytes(procs) -> dict[int, int]
        resident set size of each live process, by pid.

    class TreeSampler(every_s=0.05, root=None, cpu=True)
        A context manager; a daemon thread samples the tree every ``every_s`` seconds while the
        block runs, and once more at exit.
        sample() -> int                 take one sample now; the tree's summed RSS in bytes.
        peak, peak_root                 peak summed RSS of the tree, and peak RSS of the root alone.
        peak_by_name, peak_by_kind      {process name or kind: [bytes, processes]} at the tree's peak.
        idle                            the tree's summed RSS on entering the block.
        After the block:
        seconds                         wall seconds of the block.
        cpu_used                        CPU seconds the tree spent in the block.
        cpu_by_pid, cpu_by_kind         the same by pid, and summed by kind() (the kind a process
                                        had when last seen: a Ray worker's title changes from
                                        IDLE to the actor it hosts).
        cpu_of(*prefixes) -> float      CPU seconds of the processes whose kind starts with any of
                                        the prefixes (e.g. "ServeReplica:b16:").

CPU counts from the block's start for processes alive then, from zero for processes started inside
it, and up to their last sample for processes that ended inside it (lower bound: the time between
their last sample and their exit is lost; pass ``cpu=False`` to skip CPU sampling).

Summed RSS counts shared pages once per process.
"""

from __future__ import annotations

import os
import threading
import time

import psutil

__all__ = ["tree", "kind", "cpu_seconds", "rss_bytes", "TreeSampler"]

_GONE = (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess)


def tree(root: int | psutil.Process | None = None) -> list[psutil.Process]:
    """``root`` (default: this process) and all its descendants; [] when ``root`` is gone."""
    try:
        top = root if isinstance(root, psutil.Process) else psutil.Process(root)
        return [top, *top.children(recursive=True)]
    except _GONE:
        return []


def kind(proc: psutil.Process) -> str:
    try:
        cmdline = proc.cmdline()
        name = proc.name()
    except _GONE:
        return ""
    if cmdline and cmdline[0].startswith("ray::"):
        return cmdline[0][len("ray::"):]  # Ray sets a worker's title to ray::<actor class or task>
    if name.startswith("python") and len(cmdline) > 1:
        script = next((a for a in cmdline[1:] if a.endswith(".py")), None)
        if script:  # Ray's own helpers are Python scripts: log_monitor.py, monitor.py, dashboard.py
            return os.path.basename(script)[:-3]
    return name


def cpu_seconds(procs: list[psutil.Process]) -> dict[int, float]:
    out = {}
    for p in procs:
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except _GONE:
            continue  # exited between listing and reading
    return out


def rss_bytes(procs: list[psutil.Process]) -> dict[int, int]:
    out = {}
    for p in procs:
        try:
            out[p.pid] = p.memory_info().rss
        except _GONE:
            continue
    return out


class TreeSampler:
    """Peak RSS and CPU seconds of a process tree over a ``with`` block (see the module docstring)."""

    def __init__(self, every_s: float = 0.05, root: int | psutil.Process | None = None, cpu: bool = True):
        self.every_s = every_s
        self.root_pid = root.pid if isinstance(root, psutil.Process) else (root or os.getpid())
        self.cpu = cpu
        self.peak = self.peak_root = self.idle = 0
        self.peak_by_name: dict[str, list[int]] = {}
        self.peak_by_kind: dict[str, list[int]] = {}
        self.seconds = self.cpu_used = 0.0
        self.cpu_by_pid: dict[int, float] = {}
        self.cpu_by_kind: dict[str, float] = {}
        self._procs: dict[int, psutil.Process] = {}  # cached, so cpu_times/name come from the same object
        self._kinds: dict[int, str] = {}
        self._cpu_start: dict[int, float] = {}
        self._cpu_last: dict[int, float] = {}
        self._cpu_ended: dict[str, float] = {}  # by kind: processes whose pid was reused in the block
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="proc_tree")

    def _current(self) -> list[psutil.Process]:
        procs = []
        for p in tree(self.root_pid):
            # Reuse the Process object seen before: psutil checks its creation time, so a reused pid
            # reads as a new process rather than as the old one.
            cached = self._procs.get(p.pid)
            try:
                reused = cached is not None and cached.create_time() != p.create_time()
            except _GONE:
                continue
            if reused:  # the old process ended inside the block: keep what it spent under its kind
                spent = self._cpu_last.pop(p.pid, 0.0) - self._cpu_start.pop(p.pid, 0.0)
                old = self._kinds.pop(p.pid, "?")
                self._cpu_ended[old] = self._cpu_ended.get(old, 0.0) + spent
            if cached is None or reused:
                self._procs[p.pid] = cached = p
            procs.append(cached)
        return procs

    def sample(self) -> int:
        with self._lock:
            procs = self._current()
            rss = rss_bytes(procs)
            total = sum(rss.values())
            by_name: dict[str, list[int]] = {}
            by_kind: dict[str, list[int]] = {}
            for p in procs:
                if p.pid not in rss:
                    continue
                k = kind(p)
                if k:
                    self._kinds[p.pid] = k
                try:
                    name = p.name()
                except _GONE:
                    continue
                for table, key in ((by_name, name), (by_kind, self._kinds.get(p.pid, name))):
                    entry = table.setdefault(key, [0, 0])
                    entry[0] += rss[p.pid]
                    entry[1] += 1
            if total > self.peak:
                self.peak, self.peak_by_name, self.peak_by_kind = total, by_name, by_kind
            self.peak_root = max(self.peak_root, rss.get(self.root_pid, 0))
            if self.cpu:
                self._cpu_last.update(cpu_seconds(procs))
            return total

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()

    def __enter__(self) -> "TreeSampler":
        self.idle = self.sample()
        self._cpu_start = dict(self._cpu_last)
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
        self.seconds = time.perf_counter() - self._t0
        if self.cpu:
            self.cpu_by_pid = {pid: c - self._cpu_start.get(pid, 0.0) for pid, c in self._cpu_last.items()}
            self.cpu_by_kind = dict(self._cpu_ended)
            self.cpu_used = sum(self.cpu_by_pid.values()) + sum(self._cpu_ended.values())
            for pid, c in self.cpu_by_pid.items():
                k = self._kinds.get(pid, "?")
                self.cpu_by_kind[k] = self.cpu_by_kind.get(k, 0.0) + c

    def cpu_of(self, *prefixes: str) -> float:
        return sum(c for k, c in self.cpu_by_kind.items() if k.startswith(prefixes))
