"""A torch extension build lock left by a killed process never hangs a run (ying/train/extension_lock.py).

Unit tests use a folder of their own and child processes that hold the locks; the last test plants
a leftover ``lock`` in the real DeepSpeed op folder and runs a short Stage I through Ray Train.
"""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from ying.train.extension_lock import extension_build_lock

NOTICE_S = 1.0  # the 60 s notice, shortened


def _within(seconds: float, fn):
    """fn() in a thread, failing the test (rather than hanging it) if it takes over ``seconds``."""
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the test thread
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    start = time.monotonic()
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still waiting after {seconds} s"
    if "error" in box:
        raise box["error"]
    return box.get("value"), time.monotonic() - start


def _enter(build_dir, lines):
    with extension_build_lock(str(build_dir), notice_after_s=NOTICE_S, poll_s=0.05, log=lines.append):
        return os.path.exists(build_dir / "lock")


def _child(code: str, ready, *args) -> subprocess.Popen:
    """A Python child running ``code``; returns once it has written the file ``ready``."""
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(ready), *map(str, args)])
    deadline = time.monotonic() + 60
    while not os.path.exists(ready):
        assert proc.poll() is None, f"child exited with {proc.returncode} before it was ready"
        assert time.monotonic() < deadline, "child never got ready"
        time.sleep(0.05)
    return proc


@pytest.fixture
def build_dir(tmp_path):
    d = tmp_path / "torch_extensions" / "py311_cpu" / "some_op"
    d.mkdir(parents=True)
    return d


def test_a_leftover_lock_is_removed_with_a_line_naming_it(build_dir):
    (build_dir / "lock").touch()  # what a build killed between FileBaton.try_acquire and release leaves
    lines = []
    still_there, took = _within(30, lambda: _enter(build_dir, lines))
    assert not still_there and not (build_dir / "lock").exists()
    assert len(lines) == 1 and str(build_dir / "lock") in lines[0] and "stale" in lines[0], lines
    assert took < 10  # cleared, not waited for


def test_no_lock_no_line(build_dir):
    lines = []
    _within(30, lambda: _enter(build_dir, lines))
    assert lines == []


def test_a_build_killed_inside_the_lock_leaves_nothing_that_blocks_the_next(build_dir, tmp_path):
    # The Ctrl-C case: a loader holds Ying's flock and torch's baton, and dies without releasing either.
    child = _child("""
        import sys, time
        from torch.utils.file_baton import FileBaton
        from ying.train.extension_lock import extension_build_lock
        with extension_build_lock(sys.argv[2]):
            FileBaton(sys.argv[2] + "/lock").try_acquire()  # torch's _jit_compile, mid-build
            open(sys.argv[1], "w").close()
            time.sleep(600)
    """, tmp_path / "ready", build_dir)
    child.send_signal(signal.SIGKILL)
    child.wait(30)
    assert (build_dir / "lock").exists()
    lines = []
    still_there, took = _within(30, lambda: _enter(build_dir, lines))
    assert not still_there and len(lines) == 1 and str(build_dir / "lock") in lines[0] and "stale" in lines[0], lines
    assert took < NOTICE_S + 5


def test_loads_take_turns_and_a_long_wait_says_so_naming_the_file(build_dir, tmp_path):
    child = _child("""
        import sys, time
        from ying.train.extension_lock import extension_build_lock
        with extension_build_lock(sys.argv[2]):
            open(sys.argv[1], "w").close()
            time.sleep(3)
    """, tmp_path / "ready", build_dir)
    lines = []
    _, took = _within(60, lambda: _enter(build_dir, lines))
    assert child.wait(30) == 0
    assert took >= 2  # it waited for the child's turn to end
    flock_file = f"{build_dir}.ying-flock"
    assert len(lines) == 1 and flock_file in lines[0] and f"pid {child.pid}" in lines[0], lines


def test_a_lock_a_live_build_holds_is_waited_for_and_never_removed(build_dir, tmp_path):
    # Another program's torch build (not under Ying's flock) holds its baton: it is left alone.
    child = _child("""
        import sys, time
        from torch.utils.file_baton import FileBaton
        baton = FileBaton(sys.argv[2] + "/lock")
        assert baton.try_acquire()
        open(sys.argv[1], "w").close()
        time.sleep(3)
        baton.release()  # os.remove: raises, and the child exits 1, if the lock was taken from it
    """, tmp_path / "ready", build_dir)
    lines = []
    still_there, took = _within(60, lambda: _enter(build_dir, lines))
    assert child.wait(30) == 0, "the live build's lock was removed under it"
    assert not still_there and took >= 2
    assert len(lines) == 1 and str(build_dir / "lock") in lines[0] and f"pid {child.pid}" in lines[0], lines
    assert "stale" not in lines[0]


def test_stage1_finishes_past_a_leftover_lock_in_the_real_op_folder(ray_cluster, tmp_path):
    """A leftover ``lock`` where DeepSpeed's shm op is built: a 2-worker Stage I clears it, says so, and finishes."""
    import ray._private.worker

    from test_train import write_records
    from ying.config import load_config
    from ying.train.extension_lock import deepspeed_op_builders, torch_extension_build_dir
    from ying.train.stages import fit, stage_plan

    (builder,) = deepspeed_op_builders()
    build_dir = torch_extension_build_dir(builder.name)  # the workers' folder too: they inherit this environment
    lock = os.path.join(build_dir, "lock")
    # Planted while holding Ying's flock, so no live load on this machine (another test run) owns a lock there.
    with extension_build_lock(build_dir):
        os.close(os.open(lock, os.O_CREAT | os.O_EXCL))
    planted = os.stat(lock).st_ino

    data_dir = write_records(tmp_path / "data", {"coco": {"train": 8, "validation": 2}})
    cfg = load_config("tiny", overrides=["train.num_workers=2"])
    plan = stage_plan(cfg, "stage1", data_dir, None, max_steps=1, warmup_steps=1, batch_size=2, micro_batch_size=1,
                      log_every=1, val_examples=2)
    try:
        # A first run on this machine also compiles the op (about a minute here); a hang fails the test.
        summary, took = _within(600, lambda: fit(cfg, plan, str(tmp_path / "ray")))
    finally:
        try:
            if os.stat(lock).st_ino == planted:  # never remove a lock some other build made since
                os.remove(lock)  # also frees a hung worker, so a failure leaves no run waiting on it
        except FileNotFoundError:
            pass
    assert summary["step"] == 1
    assert not os.path.exists(lock)
    logs = ray._private.worker._global_node.get_logs_dir_path()
    said = [line for root, _, files in os.walk(logs) for f in files if f.endswith((".out", ".log", ".err"))
            for line in open(os.path.join(root, f), errors="replace") if f"removed a stale lock {lock}" in line]
    assert said, f"no worker said it removed {lock} (looked under {logs})"
    print(f"test_extension_lock: Stage I past a leftover {lock} in {took:.0f} s")


def test_each_python_environment_builds_its_ops_in_its_own_folder(monkeypatch):
    """Two venvs on one machine used to share torch's folder and rebuild DeepSpeed's op for each other
    at every switch (ninja sees another compile command); each environment now has its own, and an
    explicit TORCH_EXTENSIONS_DIR still wins."""
    import sys

    from ying.train import extension_lock

    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.setattr(sys, "prefix", "/opt/venv-a")
    first = extension_lock.environment_build_root()
    monkeypatch.setattr(sys, "prefix", "/opt/venv-b")
    second = extension_lock.environment_build_root()
    assert first != second and os.path.dirname(first) == os.path.dirname(second)
    assert extension_lock.torch_extension_build_dir("deepspeed_shm_comm") == os.path.join(second, "deepspeed_shm_comm")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "/somewhere/else")
    assert extension_lock.torch_extension_build_dir("deepspeed_shm_comm") == "/somewhere/else/deepspeed_shm_comm"
