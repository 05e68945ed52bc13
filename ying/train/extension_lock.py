"""Load DeepSpeed's JIT-compiled ops so that a build killed half-way can never hang a later run.

On CPU, DeepSpeed builds its shared-memory comm op with ``torch.utils.cpp_extension.load``. torch
guards every load, even of an op already built, with ``FileBaton(<build dir>/lock)``: a file
created on entry and removed on exit. A process killed in between (Ctrl-C during a first run's
build) leaves the file behind, and every later load then polls for it forever, silently
(``FileBaton.wait`` has no timeout).

So each training worker loads those ops itself, first thing, under an ``fcntl.flock`` of its own on
``<build dir>.ying-flock`` beside torch's build dir. The kernel drops a flock when its process
dies, however it dies. Holding it, no other Ying loader can be inside torch's load, so a ``lock``
file found then was left by a dead process. Before removing it we still check ``/proc`` (where there
is one) that no live process has it open (torch keeps the file open while it holds the baton), so a
build started by some other program on this machine is waited for, never broken. Either wait
announces itself once after ``notice_after_s`` (60 s by default), naming the file. DeepSpeed's own load, later in
``deepspeed.initialize``, then finds the op in its in-process cache and takes no baton at all.
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from typing import Callable, Iterator

__all__ = ["extension_build_lock", "load_deepspeed_ops", "deepspeed_op_builders", "torch_extension_build_dir",
           "environment_build_root", "use_environment_build_root",
           "WAIT_NOTICE_S"]

WAIT_NOTICE_S = 60.0

# The ops DeepSpeed JIT-loads in our training workers: on the CPU accelerator, the shared-memory
# collectives (TorchBackend's build_shm_op, at init_distributed). Ying hands DeepSpeed a torch AdamW
# and no offload, so no optimizer or async-I/O op is built; the CUDA accelerator has no such builder.
DEEPSPEED_OPS = ("ShareMemCommBuilder",)

# torch's FileBaton.release closes the file a moment before removing it: a lock with no holder is
# looked at again after this long before it is called stale.
_RELEASE_GRACE_S = 0.5


def _print(line: str) -> None:
    print(line, flush=True)


def environment_build_root() -> str:
    """torch's default extensions folder, one subfolder per Python environment.

    torch keeps one build folder per op name for every environment of a user, and ninja rebuilds an
    op whose compile command changed: the include paths of another venv's DeepSpeed are another
    command. Two environments on one machine (a project venv and a fresh clone's) then rebuilt the
    shm op for each other at every switch, a minute of gcc on 2 cores before a training starts."""
    import hashlib
    import sys

    from torch.utils.cpp_extension import get_default_build_root

    key = hashlib.sha256(os.path.realpath(sys.prefix).encode()).hexdigest()[:10]
    return os.path.join(get_default_build_root(), f"env-{key}")


def use_environment_build_root() -> str:
    """Point torch at this environment's extensions folder unless TORCH_EXTENSIONS_DIR says otherwise."""
    return os.environ.setdefault("TORCH_EXTENSIONS_DIR", environment_build_root())


def torch_extension_build_dir(name: str) -> str:
    """The folder torch builds and loads extension ``name`` in: TORCH_EXTENSIONS_DIR, else this
    environment's folder (``environment_build_root``); the loaders below use this one."""
    # torch's own resolver, the one cpp_extension.load uses.
    from torch.utils.cpp_extension import _get_build_directory

    use_environment_build_root()
    return _get_build_directory(name, verbose=False)


def _open_by(path: str) -> list[int] | None:
    """Pids of live processes that have ``path`` open; None where /proc can't tell (not Linux)."""
    if not os.path.isdir("/proc/self/fd"):
        return None
    target = os.path.realpath(path)
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:  # gone, or another user's process (which can't hold a lock in our folder)
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    pids.append(int(pid))
                    break
            except OSError:
                continue
    return pids


def _describe(pids: list[int]) -> str:
    def cmdline(pid: int) -> str:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:80]
        except OSError:
            return "?"

    return ", ".join(f"pid {pid} ({cmdline(pid)})" for pid in pids)


class _Notice:
    """Says once, after ``after_s`` of waiting, what the wait is for."""

    def __init__(self, after_s: float, log: Callable[[str], None]) -> None:
        self.start, self.after_s, self.log, self.said = time.monotonic(), after_s, log, False

    def maybe(self, line: Callable[[float], str]) -> None:
        waited = time.monotonic() - self.start
        if not self.said and waited >= self.after_s:
            self.log(line(waited))
            self.said = True


def _take_flock(fd: int, path: str, name: str, notice: _Notice, poll_s: float) -> None:
    def line(waited: float) -> str:
        try:
            who = _describe([int(os.pread(fd, 32, 0).decode().strip())])  # the holder wrote its pid
        except (ValueError, OSError):
            who = "another process"
        return (f"[ying] waited {waited:.0f} s for {path}: {who} is loading DeepSpeed's {name} op (a first run "
                "compiles it, minutes on a small machine); waiting on: the lock is freed when that process finishes "
                "or dies")

    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            notice.maybe(line)
            time.sleep(poll_s)


def _clear_or_wait(lock: str, name: str, notice: _Notice, poll_s: float, log: Callable[[str], None]) -> None:
    """Return once torch's ``lock`` is gone: removed here when no live process holds it, else waited for."""
    while True:
        try:
            first = os.stat(lock)
        except FileNotFoundError:
            return
        holders = _open_by(lock)
        if not holders:
            time.sleep(_RELEASE_GRACE_S)
            try:
                again = os.stat(lock)
            except FileNotFoundError:
                return  # a live build was just releasing it
            if (again.st_dev, again.st_ino) == (first.st_dev, first.st_ino) and not _open_by(lock):
                try:
                    os.remove(lock)
                except FileNotFoundError:
                    return
                log(f"[ying] removed a stale lock {lock}: no live process holds it (left by a process killed while "
                    f"loading DeepSpeed's {name} op, e.g. Ctrl-C during a first run's build); training goes on")
                return
            continue
        notice.maybe(lambda waited: f"[ying] waited {waited:.0f} s for {lock}: {_describe(holders)} is building "
                                    f"DeepSpeed's {name} op outside Ying's lock; waiting on until it finishes (if that "
                                    "process is stuck, end it: its lock is then cleared here)")
        time.sleep(poll_s)


@contextmanager
def extension_build_lock(build_dir: str, *, notice_after_s: float = WAIT_NOTICE_S, poll_s: float = 0.5,
                         log: Callable[[str], None] = _print) -> Iterator[None]:
    """Hold Ying's lock on torch extension folder ``build_dir``, with no stale torch ``lock`` left in it.

    Loads of the same op by Ying processes on this machine run one at a time inside this block; a
    wait of more than ``notice_after_s`` prints one line naming the file waited on.
    """
    build_dir = build_dir.rstrip("/")
    name = os.path.basename(build_dir)
    flock_path = f"{build_dir}.ying-flock"
    os.makedirs(os.path.dirname(flock_path), exist_ok=True)
    notice = _Notice(notice_after_s, log)
    fd = os.open(flock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _take_flock(fd, flock_path, name, notice, poll_s)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # for the waiting line of whoever comes next
        _clear_or_wait(os.path.join(build_dir, "lock"), name, notice, poll_s, log)
        yield
    finally:
        os.close(fd)  # releases the flock


def deepspeed_op_builders() -> list:
    """The builders of ``DEEPSPEED_OPS`` that DeepSpeed would load on this accelerator (as it decides)."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    builders = [get_accelerator().create_op_builder(class_name) for class_name in DEEPSPEED_OPS]
    # DeepSpeed's own test before loading (deepspeed.comm.torch.build_shm_op): absent or incompatible is skipped.
    return [b for b in builders if b is not None and deepspeed.ops.__compatible_ops__.get(b.NAME, False)]


def load_deepspeed_ops(*, notice_after_s: float = WAIT_NOTICE_S, log: Callable[[str], None] = _print) -> list[str]:
    """Load (building if needed) the DeepSpeed ops this process will use, each under its extension lock.

    Call before anything starts DeepSpeed's comm backend (``deepspeed.initialize``, ``zero.Init``);
    DS_ACCELERATOR must already be chosen. Returns the names of the ops loaded.
    """
    loaded = []
    for builder in deepspeed_op_builders():
        with extension_build_lock(torch_extension_build_dir(builder.name), notice_after_s=notice_after_s, log=log):
            builder.load(verbose=False)  # cached per process: DeepSpeed's later load of it takes no baton
        loaded.append(builder.name)
    return loaded
