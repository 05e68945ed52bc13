"""The same plan gives the same weights: in another data dir and run dir, and after its driver is
killed mid-stage and the stage re-run. What a researcher comparing two configs relies on."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_train import write_records

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tests" / "repro_stage.py"
STEPS = 20  # 70 records, 35 per worker, 8 micro-batches of 4 an epoch: the kill lands mid-epoch


@pytest.fixture(scope="module")
def session_address(ray_cluster):
    return ray_cluster.get_runtime_context().gcs_address


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
    first = tmp_path_factory.mktemp("repro-data")
    write_records(first, {"coco": {"train": 40, "validation": 6}, "vqa-v2": {"train": 30, "validation": 6}})
    from ying.config import load_config
    from ying.model.checkpoint import save_checkpoint
    from ying.model.tokenizer import build_tokenizer
    from ying.model.vlm import build_model

    cfg = load_config("tiny")
    tok = build_tokenizer(cfg.model.tokenizer)
    save_checkpoint(build_model(cfg.model, tok, seed=0), tok, cfg.model, str(first / "init"))
    second = tmp_path_factory.mktemp("elsewhere") / "data"
    shutil.copytree(first, second)
    return str(first), str(second)


def _cmd(data: str, root: Path, address: str) -> list[str]:
    # From an init checkpoint, as Stage II, Stage I after pretrain and every trial start: nothing is
    # built seeded there, so dropout's RNG must be seeded by the loop itself.
    return [sys.executable, str(SCRIPT), "--data", data, "--storage", str(root / "ray"), "--out", str(root / "hf"),
            "--address", address, "--steps", str(STEPS), "--init", str(Path(data) / "init")]


def _run(data: str, root: Path, address: str) -> tuple[dict, str]:
    proc = subprocess.run(_cmd(data, root, address), cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    line = next(x for x in out.splitlines() if x.startswith("SUMMARY "))
    return json.loads(line[len("SUMMARY "):]), out


@pytest.fixture(scope="module")
def uninterrupted(data_dirs, session_address, tmp_path_factory):
    root = tmp_path_factory.mktemp("run-a")
    summary, _ = _run(data_dirs[0], root, session_address)
    assert summary["step"] == STEPS and summary["epoch"] >= 2  # several epochs: each one reshuffled
    return (root / "hf" / "model.safetensors").read_bytes()


def test_the_same_plan_in_another_data_dir_and_run_dir_gives_identical_bytes(uninterrupted, data_dirs,
                                                                            session_address, tmp_path):
    _run(data_dirs[1], tmp_path / "run-b", session_address)
    assert (tmp_path / "run-b" / "hf" / "model.safetensors").read_bytes() == uninterrupted


def test_a_driver_killed_right_after_a_checkpoint_resumes_from_it_and_ends_with_identical_bytes(
        uninterrupted, data_dirs, session_address, tmp_path):
    root = tmp_path / "run-c"
    proc = subprocess.Popen(_cmd(data_dirs[0], root, session_address), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.time() + 600
    try:
        # The kill comes the moment the step-10 checkpoint is complete: mid-epoch, mid-stage.
        while not list((root / "ray").glob("stage1-*/resume/step_00000010/COMPLETE.json")):
            assert proc.poll() is None, "the driver ended before its step-10 checkpoint"
            assert time.time() < deadline, "no step-10 checkpoint within 10 minutes"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (root / "hf" / "model.safetensors").exists()
    time.sleep(5)  # the cluster reaps the dead driver's training actors
    summary, out = _run(data_dirs[0], root, session_address)
    assert summary["resumed_from_step"] >= 10 and "resumed at step" in out
    assert (root / "hf" / "model.safetensors").read_bytes() == uninterrupted
