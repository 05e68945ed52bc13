"""Re-runs retrain, crashes resume: what a user meets after changing a setting, killing the driver,
or losing a training worker.

The DAG runs as a user runs it, `python workflows/full.py ...` in a subprocess (connected to the
test session's cluster), so the driver can be killed for real.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# A small mini-world and a short Stage I with a checkpoint every 5 steps.
SMALL = [
    "miniworld.n_images={coco/train: 48, coco/validation: 8, coco/test: 4, vqa-v2/train: 16, vqa-v2/validation: 4,"
    " coco-goi/train: 8, coco-goi/validation: 4, flickr8k-cn/train: 4, flickr8k-cn/validation: 4,"
    " flickr8k-cn/test: 4, okvqa/train: 4, okvqa/validation: 2, clevr/train: 4, clevr/validation: 2,"
    " visual-dialog/train: 4, visual-dialog/validation: 2, visual-dialog/test: 2}",
    "miniworld.n_videos={msrvtt-qa/train: 2, msrvtt-qa/validation: 2, msrvtt-qa/test: 2}",
    "train.pretrain.enabled=false",  # Stage I's own resume is under test: from the random init
    # One worker: the stage trains in a Ray task, not a worker group (the worker group's re-runs are
    # test_reproducible's and test_full_dag's); what a re-run keeps or retrains is the same either way.
    "train.num_workers=1",
    "train.stage1.max_steps=20", "train.stage1.warmup_steps=2", "train.stage1.batch_size=8",
    "train.stage1.checkpoint_every=5", "train.stage1.val_examples=8",
]


def _cmd(run_dir: str, address: str, *extra: str) -> list[str]:
    args = [sys.executable, str(REPO / "workflows" / "full.py"), "--run-dir", run_dir, "--address", address,
            "--until", "stage1"]
    for override in SMALL + list(extra):
        args += ["--set", override]
    return args


def _run(run_dir: str, address: str, *extra: str) -> str:
    proc = subprocess.run(_cmd(run_dir, address, *extra), cwd=REPO, capture_output=True, text=True, timeout=1500)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def _stage1(run_dir: str) -> tuple[dict, bytes]:
    manifest = json.loads(Path(run_dir, "stage1", "_manifest.json").read_text())
    return manifest, Path(run_dir, "stage1", "hf", "model.safetensors").read_bytes()


def _checkpoint_registered(runs: Path, older: set[str], stage: str = "stage1") -> bool:
    """A complete resume checkpoint of the run: every rank's files in, then rank 0's COMPLETE.json (a
    re-run resumes from it, however soon after it the kill comes). Runs named in ``older`` (other
    plans, removed when the new one starts) don't count."""
    return any(marker.parents[2].name not in older for marker in runs.glob(f"{stage}-*/resume/step_*/COMPLETE.json"))


@pytest.fixture(scope="module")
def session_address(ray_cluster):
    return ray_cluster.get_runtime_context().gcs_address


@pytest.fixture(scope="module")
def first_stage1(session_address, tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("resume") / "run")
    _run(run_dir, session_address)
    return run_dir


def test_changing_the_learning_rate_retrains_from_the_start(first_stage1, session_address):
    run_dir = first_stage1
    before_manifest, before_weights = _stage1(run_dir)
    out = _run(run_dir, session_address, "train.stage1.lr=1e-4")
    manifest, weights = _stage1(run_dir)
    assert "stage1: running (config changed: train.stage1.lr" in out
    assert "resumed at step" not in out  # a new plan never picks up the old run's checkpoint
    assert manifest["config"]["train.stage1"]["lr"] == 1e-4
    assert manifest["outputs"]["step"] == 20 and manifest["outputs"]["resumed_from_step"] is None
    assert isinstance(manifest["outputs"]["loss"], float) and manifest["outputs"]["loss"] == manifest["outputs"]["loss"]
    assert weights != before_weights
    assert manifest["outputs"]["run_name"] != before_manifest["outputs"]["run_name"]
    # It trained in a task holding one worker's CPUs, in the task's own process: no worker group.
    assert manifest["outputs"]["in_process"] is True and "(ying:stage1-train pid=" in out
    # The old plan's Ray Train run is gone: nothing can resume from it by mistake.
    runs = sorted(p.name for p in Path(run_dir, "stage1", "ray_train").iterdir() if p.is_dir())
    assert runs == [manifest["outputs"]["run_name"]]


def _training_pids(address: str, workers: int) -> list[int]:
    """The processes training Stage II: the worker group's, or the one task's that trains a 1-worker stage."""
    from ray.util.state import list_actors, list_tasks

    if workers == 1:
        return [t.worker_pid for t in list_tasks(address=address, filters=[("name", "=", "ying:stage2-train"),
                                                                             ("state", "=", "RUNNING")]) if t.worker_pid]
    return [a.pid for a in list_actors(address=address, filters=[("class_name", "=", "RayTrainWorker"),
                                                                  ("state", "=", "ALIVE")]) if a.pid]


@pytest.mark.parametrize("workers", [2, 1])
def test_a_killed_training_worker_is_replaced_and_the_stage_finishes(ray_cluster, tmp_path, workers):
    """SIGKILL a training process mid Stage II: a worker group restarts from the last checkpoint, and
    so does the task that trains a 1-worker stage (Ray retries it, up to train.max_failures)."""
    from tests.test_train import write_records
    from ying.config import load_config
    from ying.model.checkpoint import save_checkpoint
    from ying.model.tokenizer import build_tokenizer
    from ying.model.vlm import build_model
    from ying.train.stages import run_stage

    data_dir = write_records(tmp_path, {"coco": {"train": 40, "validation": 4}, "vqa-v2": {"train": 40, "validation": 4}})
    cfg = load_config("tiny", overrides=["train.max_failures=2", f"train.num_workers={workers}"])
    tok = build_tokenizer(cfg.model.tokenizer)
    init = str(tmp_path / "init")
    save_checkpoint(build_model(cfg.model, tok, seed=0), tok, cfg.model, init)
    stage_dir = tmp_path / "stage2"
    result: dict = {}

    def train():
        try:
            result["summary"] = run_stage(cfg, "stage2", data_dir, str(stage_dir), init_checkpoint=init,
                                          tasks=["coco", "vqa-v2"], max_steps=60, warmup_steps=2, batch_size=8, lr=5e-4,
                                          checkpoint_every=5, log_every=5, val_examples=4)
        except BaseException as e:  # surfaced by the assertion below
            result["error"] = e

    thread = threading.Thread(target=train)
    thread.start()
    deadline = time.time() + 1200
    pids = []
    while len(pids) < workers:  # find the workers first, so the kill lands right after a checkpoint
        assert thread.is_alive(), result
        assert time.time() < deadline, "no training workers within 20 minutes"
        pids = _training_pids(ray_cluster.dashboard_url, workers)
        time.sleep(0.5)
    while not _checkpoint_registered(stage_dir / "ray_train", set(), stage="stage2"):
        assert thread.is_alive(), result
        assert time.time() < deadline, "no checkpoint within 20 minutes"
        time.sleep(0.2)
    os.kill(pids[-1], signal.SIGKILL)
    thread.join(timeout=1500)
    assert "error" not in result, result.get("error")
    summary = result["summary"]
    assert summary["step"] == 60  # the planned number of steps, not more, not fewer
    assert summary["resumed_from_step"] and summary["resumed_from_step"] % 5 == 0
    assert [h["step"] for h in summary["history"]] == list(range(5, 61, 5))  # no step logged twice
    assert summary["in_process"] is (workers == 1)
