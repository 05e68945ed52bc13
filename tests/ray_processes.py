"""A Ray cluster of `ray start` processes on this machine, for tests that need one of their own
(several nodes, token auth) beside the session's shared cluster.

Each `ray start --block` runs in its own process group and is stopped by signalling that group
(never `ray stop`, which would stop every Ray on the machine). RAY_TMPDIR points at a private
folder, so the address file `ray start` writes does not lead another `ray.init()` on this machine
to this cluster, and everything the cluster writes to disk stays where the test can look at it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path


def torch_extensions_dir() -> str:
    """Where torch keeps the C++ extensions it compiled (DeepSpeed's CPU ops) for this Python
    environment (``ying.train.extension_lock``): a cluster given another HOME is pointed here, so
    nothing is rebuilt."""
    from ying.train.extension_lock import use_environment_build_root

    return use_environment_build_root()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayProcessCluster:
    def __init__(self, root: Path, env: dict[str, str], head_cpus: int = 0, worker_cpus: tuple[int, ...] = (),
                 object_store_bytes: int = 150 * 1024 * 1024, home: bool = False) -> None:
        """``home``: give the cluster's processes (and drivers run with ``env``) a HOME inside ``root``."""
        self.root = Path(root)
        if home:
            (self.root / "home").mkdir(parents=True, exist_ok=True)
            env = {**env, "HOME": str(self.root / "home"), "TORCH_EXTENSIONS_DIR": torch_extensions_dir()}
        self.env = {**env, "RAY_TMPDIR": str(self.root), "TMPDIR": str(self.root), "RAY_USAGE_STATS_ENABLED": "0",
                    # A loaded CI machine can take over Ray's default minute to start the dashboard.
                    "RAY_DASHBOARD_STARTUP_TIMEOUT_S": "600"}
        self.head_cpus, self.worker_cpus = head_cpus, worker_cpus
        self.object_store_bytes = object_store_bytes
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.metrics_ports: list[int] = []  # each node's Prometheus endpoint
        self.procs: list[subprocess.Popen] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def metrics_endpoints(self) -> list[str]:
        return [f"http://127.0.0.1:{port}/metrics" for port in self.metrics_ports]

    def _start(self, args: list[str], name: str) -> None:
        log = open(self.root / f"{name}.log", "wb")
        self.metrics_ports.append(free_port())
        # Every port chosen here: Ray's fixed defaults (e.g. the dashboard agent's 52365) may be
        # held by another Ray on this machine.
        self.procs.append(subprocess.Popen(
            ["ray", "start", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1",
             f"--object-store-memory={self.object_store_bytes}", f"--metrics-export-port={self.metrics_ports[-1]}",
             f"--dashboard-agent-listen-port={free_port()}", *args],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    def start(self, timeout_s: float = 600, attempts: int = 3) -> "RayProcessCluster":
        """Start the head, then the workers. On a loaded machine a node can miss Ray's own 30 s
        start-up window and exit; the cluster is then started again, afresh, a few times."""
        self.root.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, attempts + 1):
            try:
                self._start(["--head", f"--port={self.gcs_port}", f"--num-cpus={self.head_cpus}",
                             "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                             f"--dashboard-port={self.dashboard_port}", f"--ray-client-server-port={free_port()}"],
                            f"head-{attempt}")
                self._wait_nodes(1, timeout_s)
                # One worker at a time: nodes starting together in one session folder pick the
                # same next free socket name ("plasma_store.1"), and the second raylet dies with
                # "bind: Address already in use".
                for k, cpus in enumerate(self.worker_cpus):
                    self._start([f"--address={self.address}", f"--num-cpus={cpus}"], f"worker{k}-{attempt}")
                    self._wait_nodes(2 + k, timeout_s)
                return self
            except RuntimeError:
                self.stop()
                if attempt == attempts:
                    raise
                self.procs, self.metrics_ports = [], []
                self.gcs_port, self.dashboard_port = free_port(), free_port()
        return self

    def alive_nodes(self) -> int:
        request = urllib.request.Request(f"{self.dashboard_url}/nodes?view=summary")
        token_path = self.env.get("RAY_AUTH_TOKEN_PATH")
        if token_path:
            request.add_header("Authorization", f"Bearer {Path(token_path).read_text().strip()}")
        body = json.loads(urllib.request.urlopen(request, timeout=10).read())
        return sum(1 for n in body["data"]["summary"] if n.get("raylet", {}).get("state") == "ALIVE")

    def _wait_nodes(self, n: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            dead = [p for p in self.procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"ray start exited: {[p.args for p in dead]}\n{self._why_dead()}"
                                   f"see {self.root}/*.log")
            try:
                if self.alive_nodes() >= n:
                    return
            except (OSError, KeyError, ValueError):
                pass  # the dashboard is still starting
            if time.monotonic() > deadline:
                raise RuntimeError(f"{n} Ray nodes did not come up in {timeout_s:.0f}s; see {self.root}/*.log")
            time.sleep(1)

    def _why_dead(self) -> str:
        """The lines that say why a node went down: CI shows only the exception, and the folder
        with the logs is gone by then."""
        logs = sorted(self.root.glob("*.log"))
        session = self.root / "ray" / "session_latest" / "logs"
        if session.is_dir():
            logs += sorted(session.glob("raylet*.out")) + sorted(session.glob("gcs_server*.out"))
        lines = []
        for log in logs:
            for line in log.read_text(errors="replace").splitlines():
                if any(mark in line for mark in ("Exception", "Error", "error:", " E ", "Unhandled")):
                    lines.append(f"{log.name}: {line[:300]}")
        return "".join(line + "\n" for line in lines[-20:])

    def stop(self, grace_s: float = 3) -> None:
        """SIGINT: `ray start --block` shuts its node down at once (SIGTERM takes it half a minute): 1-2 s.
        A head that has run Ray Jobs can hang in that shutdown (its processes then linger past 30 s), so
        after ``grace_s`` the node's whole process group is killed: the cluster is a test's own (the
        heads of test_full_dag and test_job_auth waited out 10 s of grace every time)."""
        for proc in reversed(self.procs):  # workers first, then the head
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
        deadline = time.monotonic() + grace_s
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # also the node's processes `ray start` left behind
            except ProcessLookupError:
                pass
            proc.wait(timeout=30)

    def save_logs(self, dest: Path) -> None:
        """Copy the `ray start` outputs and the session's logs to ``dest`` (pytest keeps its tmp dirs),
        so a failure can be read after the cluster's folder is gone."""
        dest.mkdir(parents=True, exist_ok=True)
        for log in self.root.glob("*.log"):
            shutil.copy(log, dest / log.name)
        session = self.root / "ray" / "session_latest" / "logs"
        if session.is_dir():
            shutil.copytree(session, dest / "session_logs", dirs_exist_ok=True, ignore_dangling_symlinks=True)

    def __enter__(self) -> "RayProcessCluster":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


@contextmanager
def temporary_cluster(prefix: str, env: dict[str, str], logs_dir: Path, **kwargs):
    """A RayProcessCluster in a fresh folder under /tmp (short: Ray's socket paths must fit in 107
    bytes), its logs copied to ``logs_dir`` and the folder removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    cluster = RayProcessCluster(root, env, **kwargs)
    try:
        with cluster:
            yield cluster
    finally:
        cluster.save_logs(logs_dir)
        shutil.rmtree(root, ignore_errors=True)
