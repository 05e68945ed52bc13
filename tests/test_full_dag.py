"""The whole DAG, submitted as a Ray Job (as `ray job submit -- python workflows/full.py` does),
twice: the first run builds, trains, evaluates and serves a tiny model; the second skips it all."""

import json
import os
import socket
import time
from pathlib import Path

import pytest

from ying.config import load_config

REPO = Path(__file__).resolve().parent.parent

# The tiny preset, shrunk so the whole DAG runs in a couple of minutes on 2 CPUs.
SMALL = [
    "miniworld.n_images={coco/train: 40, coco/validation: 8, coco/test: 8, vqa-v2/train: 30, vqa-v2/validation: 8,"
    " coco-goi/train: 10, coco-goi/validation: 4, flickr8k-cn/train: 4, flickr8k-cn/validation: 4,"
    " flickr8k-cn/test: 4, okvqa/train: 6, okvqa/validation: 3, clevr/train: 4, clevr/validation: 2,"
    " visual-dialog/train: 10, visual-dialog/validation: 2, visual-dialog/test: 2}",
    "miniworld.n_videos={msrvtt-qa/train: 2, msrvtt-qa/validation: 2, msrvtt-qa/test: 2}",
    "train.stage1.max_steps=6", "train.stage1.warmup_steps=2", "train.stage1.batch_size=8",
    "train.stage2.max_steps=6", "train.stage2.warmup_steps=2", "train.stage2.batch_size=8",
    "tune.trial_steps=3", "eval.max_per_task=4", "eval.max_new_tokens=8",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _submit(client, run_dir: str, port: int) -> tuple[str, str]:
    from ray.job_submission import JobStatus

    args = " ".join(f"--set '{o}'" for o in SMALL + [f"serve.port={port}"])
    job = client.submit_job(
        entrypoint=f"python workflows/full.py --run-dir {run_dir} {args}",
        runtime_env={"working_dir": str(REPO), "excludes": ["runs/", ".git/"]},
    )
    deadline = time.time() + 900
    while client.get_job_status(job) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.time() < deadline, "the DAG job did not finish in 15 minutes"
        time.sleep(2)
    logs = client.get_job_logs(job)
    assert client.get_job_status(job) == JobStatus.SUCCEEDED, logs[-4000:]
    return job, logs


@pytest.fixture(scope="module")
def first_run(ray_cluster, tmp_path_factory):
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(ray_cluster.dashboard_url)
    run_dir = str(tmp_path_factory.mktemp("dag") / "run")
    port = _free_port()
    _, logs = _submit(client, run_dir, port)
    return client, run_dir, port, logs


STAGES = ["sources", "unify", "rephrase", "qc", "stage1", "stage2", "tune", "eval", "serve"]


def test_first_run_executes_every_stage_and_reports(first_run):
    _, run_dir, _, logs = first_run
    for stage in STAGES:
        manifest = json.loads(Path(run_dir, stage, "_manifest.json").read_text())
        assert manifest["stage"] == stage and manifest["fingerprint"]
        assert f"[ying] {stage}: running" in logs
    metrics = json.loads(Path(run_dir, "eval", "metrics.json").read_text())
    assert set(metrics) == {"majority-answer", "stage1", "stage2"}
    for model in metrics.values():
        assert set(model) == {"coco", "vqa-v2", "coco-goi", "flickr8k-cn", "msrvtt-qa", "okvqa", "clevr",
                              "visual-dialog"}
        assert all(set(s) == {"exact_match", "rouge_l", "n"} and 0 <= s["exact_match"] <= 1 for s in model.values())
    report = Path(run_dir, "report.md").read_text()
    assert "Exact match" in report and "stage2" in report and "eval/loss.png" in report
    assert Path(run_dir, "eval", "loss.png").read_bytes()[:4] == b"\x89PNG"
    for stage in ("stage1", "stage2"):
        assert Path(run_dir, stage, "hf", "model.safetensors").exists()
    serve = json.loads(Path(run_dir, "serve", "_manifest.json").read_text())["outputs"]
    assert serve["health"]["status"] == "ok" and isinstance(serve["check"]["output"], str)
    tune = json.loads(Path(run_dir, "tune", "_manifest.json").read_text())["outputs"]
    cfg = load_config("tiny")
    assert [t["lr"] for t in tune["trials"]] == sorted(cfg.tune.lrs) and tune["best_lr"] in cfg.tune.lrs
    assert tune["lr_source"] == "tune"
    # Stage II starts from Stage I, trains at the searched lr and never trains on held-out tasks.
    s2 = json.loads(Path(run_dir, "stage2", "_manifest.json").read_text())["outputs"]
    assert s2["lr"] == tune["best_lr"] and s2["lr_source"] == "tune"
    assert s2["plan"]["init_checkpoint"].endswith(os.path.join("stage1", "hf"))
    assert set(s2["plan"]["tasks"]) == {"coco", "vqa-v2", "coco-goi", "okvqa", "clevr", "visual-dialog"}
    # The contamination guard took out the one VisDial training dialog on an OK-VQA val image.
    qc = json.loads(Path(run_dir, "qc", "_manifest.json").read_text())["outputs"]["counts"]
    assert qc["contamination_blocked"] == {"visual-dialog": 2}


def test_second_run_skips_every_stage(first_run):
    client, run_dir, port, _ = first_run
    before = {s: Path(run_dir, s, "_manifest.json").read_text() for s in STAGES}
    _, logs = _submit(client, run_dir, port)
    for stage in STAGES:
        assert f"[ying] {stage}: up to date" in logs, stage
        assert Path(run_dir, stage, "_manifest.json").read_text() == before[stage]
    assert "running" not in "".join(line for line in logs.splitlines() if line.startswith("[ying] ") and ": " in line)
