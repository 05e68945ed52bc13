"""The ablations as a user runs them on a finished run: `python workflows/ablations.py --run-dir DIR`,
killed half way and started again (Tune's restore: no finished trial is trained twice).

Both commands run in subprocesses connected to the test session's cluster, so the driver can be
killed for real; the design of the grids, tables and verdicts is in test_ablations.py.
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

# A small mini-world, a short Stage I and a set Stage II lr (no search): what the ablations reuse.
SMALL = [
    "miniworld.n_images={coco/train: 24, coco/validation: 4, coco/test: 4, vqa-v2/train: 16, vqa-v2/validation: 4,"
    " coco-goi/train: 8, coco-goi/validation: 4, flickr8k-cn/train: 4, flickr8k-cn/validation: 4,"
    " flickr8k-cn/test: 4, okvqa/train: 4, okvqa/validation: 2, clevr/train: 4, clevr/validation: 2,"
    " visual-dialog/train: 4, visual-dialog/validation: 2, visual-dialog/test: 2}",
    "miniworld.n_videos={msrvtt-qa/train: 2, msrvtt-qa/validation: 2, msrvtt-qa/test: 2}",
    "train.pretrain.enabled=false",  # (the pretrain stage is test_pretrain's and test_full_dag's)
    "train.num_workers=1",  # Stage I in a Ray task, not a worker group (the ablations' trials train so too)
    "train.stage1.max_steps=4", "train.stage1.warmup_steps=1", "train.stage1.batch_size=8",
    "train.stage2.lr=5e-4",
]
GRID = [
    "ablations.grid={instructions_per_task: [1, 10], task_counts: [0], answers: false, seeds: [0]}",
    "ablations.trial_steps=30", "ablations.batch_size=8", "ablations.eval_max_per_task=2",
    "eval.max_new_tokens=4",
    # One trial at a time (the tiny preset runs two): the kill lands after the first trial and before
    # the second finishes, so the second run must resume the one and never retrain the other.
    "ablations.max_concurrent_trials=1",
]


def _args(script: str, run_dir: str, address: str, *extra: str) -> list[str]:
    args = [sys.executable, str(REPO / "workflows" / script), "--run-dir", run_dir, "--address", address]
    for override in SMALL + list(extra):
        args += ["--set", override]
    return args


@pytest.fixture(scope="module")
def run_until_tune(ray_cluster, tmp_path_factory):
    address = ray_cluster.get_runtime_context().gcs_address
    run_dir = str(tmp_path_factory.mktemp("ablations") / "run")
    proc = subprocess.run(_args("full.py", run_dir, address) + ["--until", "tune"], cwd=REPO, capture_output=True,
                          text=True, timeout=1500)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return run_dir, address


def test_the_ablations_need_the_runs_stage1(tmp_path):
    proc = subprocess.run(_args("ablations.py", str(tmp_path / "empty"), "auto"), cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "qc (missing), stage1 (missing), tune (missing)" in proc.stderr and "--until tune" in proc.stderr


def test_an_interrupted_ablation_resumes_without_rerunning_finished_trials(run_until_tune):
    run_dir, address = run_until_tune
    cmd = _args("ablations.py", run_dir, address, *GRID) + ["--grid", "reduced"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    first: list[str] = []
    finished = threading.Event()

    def read():
        for line in proc.stdout:
            first.append(line)
            if "figure9 1 (seed 0): trial done" in line:
                finished.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert finished.wait(timeout=1200), "".join(first)[-4000:]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver, as a lost laptop or a Ctrl-\ would
        proc.wait()
    reader.join(timeout=10)
    assert not Path(run_dir, "ablations", "_manifest.json").exists()
    time.sleep(5)  # the cluster reaps the dead job's trial actors

    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1500)
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-4000:]
    assert "resuming Tune experiment figure9-" in out  # Tune's restore of the interrupted experiment
    assert "figure9 1 (seed 0): trial started" not in out  # the finished trial is never trained again
    assert "figure9 10 (seed 0): trial done" in out
    results = json.loads(Path(run_dir, "ablations", "results.json").read_text())
    points = results["figure9"]["points"]
    assert [p["value"] for p in points] == [1, 10] and all(isinstance(p["score"], float) for p in points)
    assert [p["seed"] for p in points] == [0, 0] and results["settings"]["seeds"] == [0]
    assert [p["value"] for p in results["figure10"]["points"]] == [0]  # the Stage I model itself, no training
    assert Path(run_dir, "ablations", "figure9.png").read_bytes()[:4] == b"\x89PNG"
    # Trial checkpoints are gone once evaluated; the results stay.
    assert not any(Path(run_dir, "ablations", "trials").glob("*/hf/model.safetensors"))
    # The run's eval is not done: no report yet, and the console says why.
    assert "results.json and the plots only" in out and not Path(run_dir, "report.md").exists()
