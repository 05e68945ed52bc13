"""The whole DAG, submitted as a Ray Job (as `ray job submit -- python workflows/full.py` does).

The first run builds the data only, rephrasing through an OpenAI-compatible server on loopback
(some answers refused, some requests failing); the second runs everything, re-sending only the
refused rephrasings (the rest are cache hits), then trains, evaluates and serves a tiny model;
the third skips it all. While they run, Ray's Prometheus endpoint is scraped: every series that
dashboards/*.json queries must show up.

The run dir is a local path: the test cluster is one machine, so it is honestly a filesystem every
node shares (`run.shared_fs=true`; without it a Ray job refuses a local run dir). The cluster is
a `ray start --head` of this module's own, with every port picked free, so another Ray on the
machine (holding the dashboard agent's default port, say) can't take its job agent away.
"""

import json
import os
import socket
import time
from pathlib import Path

import pytest

from metrics_scrape import Scraper, dashboard_series
from openai_stub_server import OpenAIStubServer
from ray_processes import temporary_cluster

REPO = Path(__file__).resolve().parent.parent

# The tiny preset, shrunk so the whole DAG runs in a couple of minutes on 2 CPUs.
SMALL = [
    "miniworld.n_images={coco/train: 40, coco/validation: 8, coco/test: 8, vqa-v2/train: 30, vqa-v2/validation: 8,"
    " coco-goi/train: 10, coco-goi/validation: 4, flickr8k-cn/train: 4, flickr8k-cn/validation: 4,"
    " flickr8k-cn/test: 4, okvqa/train: 6, okvqa/validation: 3, clevr/train: 4, clevr/validation: 2,"
    " visual-dialog/train: 10, visual-dialog/validation: 2, visual-dialog/test: 2, laion/train: 8,"
    " llava/train: 8}",
    "miniworld.n_videos={msrvtt-qa/train: 2, msrvtt-qa/validation: 2, msrvtt-qa/test: 2}",
    "train.pretrain.texts=64", "train.pretrain.validation_texts=16", "train.pretrain.max_steps=4",
    "train.pretrain.warmup_steps=1", "train.pretrain.batch_size=8", "train.pretrain.val_examples=8",
    "train.stage1.max_steps=6", "train.stage1.warmup_steps=2", "train.stage1.batch_size=8",
    "train.stage2.max_steps=6", "train.stage2.warmup_steps=2", "train.stage2.batch_size=8",
    "tune.lrs=[5e-4, 1e-3]", "tune.trial_steps=3", "eval.max_per_task=4", "eval.max_new_tokens=8",
    "ablations.trial_steps=3", "ablations.eval_max_per_task=2",
    # One trained trial (Figure 9 at k=1) and Figure 10's untrained 0-task point: the stage's place in
    # the DAG and its report sections; interrupted grids are test_ablations_run's.
    "ablations.grid={instructions_per_task: [1], task_counts: [0], answers: false, seeds: [0]}",
    # The paper's three variants (Tables 5-8), a few steps each: their stages and their rows in the report.
    # One worker each, so they train in Ray tasks beside the worker groups of pretrain, Stage I and II.
    "variants.enabled=[llava, zh, video]", "variants.llava.max_steps=3", "variants.zh.max_steps=3",
    "variants.video.max_steps=3", "variants.llava.num_workers=1", "variants.zh.num_workers=1",
    "variants.video.num_workers=1",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _submit(client, run_dir: str, overrides: list[str], flags: str = "") -> tuple[str, str]:
    from ray.job_submission import JobStatus

    args = " ".join(f"--set '{o}'" for o in SMALL + ["run.shared_fs=true"] + overrides)
    for attempt in range(60):
        try:
            job = client.submit_job(
                entrypoint=f"python workflows/full.py --run-dir {run_dir} {args} {flags}",
                runtime_env={"working_dir": str(REPO), "excludes": ["runs/", ".git/"]},
            )
            break
        except RuntimeError as e:  # a loaded machine: the job agent registers a little after the dashboard
            if "No available agent" not in str(e) or attempt == 59:
                raise
            time.sleep(5)
    deadline = time.time() + 2400  # a guard against a hung job, not a speed check (a shared CI box is slow)
    while client.get_job_status(job) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.time() < deadline, "the DAG job did not finish in 40 minutes"
        time.sleep(2)
    logs = client.get_job_logs(job)
    assert client.get_job_status(job) == JobStatus.SUCCEEDED, logs[-4000:]
    return job, logs


@pytest.fixture(scope="module")
def llm():
    # "no" is a common mini-world answer: its rephrasings are refused (kept as fallbacks, re-sent by the
    # second run); one request in ten fails with a 500 and is retried.
    with OpenAIStubServer(refuse_answers={"no"}, faults={"500": 0.1}) as stub:
        yield stub


@pytest.fixture(scope="module")
def dag_cluster(tmp_path_factory):
    with temporary_cluster("ydag", dict(os.environ), tmp_path_factory.mktemp("ray-logs"), head_cpus=2) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def first_run(dag_cluster, tmp_path_factory, llm):
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(dag_cluster.dashboard_url)
    run_dir = str(tmp_path_factory.mktemp("dag") / "run")
    # retry_failed=true in every run, so that only --retry-failed (a force) tells the runs apart.
    overrides = [f"serve.port={_free_port()}", f"rephrase.base_url={llm.base_url}", "rephrase.backoff_s=0.05",
                 "rephrase.retry_failed=true"]
    expected = set(dashboard_series())
    with Scraper(lambda: dag_cluster.metrics_endpoints) as scraper:
        _, data_logs = _submit(client, run_dir, overrides, flags="--until rephrase")
        requests_first = llm.count()
        _, logs = _submit(client, run_dir, overrides, flags="--retry-failed")  # forces rephrase and what follows
        missing = scraper.wait_for(expected, timeout_s=60)
    return {"client": client, "run_dir": run_dir, "overrides": overrides, "data_logs": data_logs, "logs": logs,
            "requests_first": requests_first, "missing_series": missing, "expected_series": expected,
            "scrapes": scraper.scrapes}


STAGES = ["sources", "unify", "rephrase", "qc", "pretrain", "stage1", "tune", "stage2", "variant_llava", "variant_video",
          "variant_zh", "eval", "ablations", "report", "serve"]


def test_first_run_executes_every_stage_and_reports(first_run):
    run_dir, logs = first_run["run_dir"], first_run["data_logs"] + first_run["logs"]
    for stage in STAGES:
        manifest = json.loads(Path(run_dir, stage, "_manifest.json").read_text())
        assert manifest["stage"] == stage and manifest["fingerprint"]
        assert f"[ying] {stage}: running" in logs
    # A training worker's progress line reaches the console once (Ray Train's print patch echoed it).
    steps = [line for line in logs.splitlines() if "[stage1] step " in line]
    assert steps and len(steps) == len(set(steps)), steps
    assert "execution finished in" not in logs  # Ray Data's notices stay in its own log files
    # No progress bar anywhere, Tune trials' Ray Data included: no redraws, no cursor-up codes, no trial table.
    assert "Running Dataset" not in logs and "| Trial name" not in logs
    # Nor coloured "(pid=...)" prefixes on the forwarded lines: a job's log is a file.
    assert not [line for line in logs.splitlines() if line.startswith("\x1b[") and "pid=" in line[:40]]
    # The serve stage's check of the app: Serve's INFO lines and access log stay in Serve's log files.
    assert "Deploying new version of Deployment" not in logs and "POST /v1/chat/completions 200" not in logs
    metrics = json.loads(Path(run_dir, "eval", "metrics.json").read_text())
    assert set(metrics) == {"majority-answer", "stage1", "stage2", "ying-vlm-llava", "ying-vlm-video", "ying-vlm-zh"}
    for model in metrics.values():
        assert set(model) == {"coco", "vqa-v2", "coco-goi", "flickr8k-cn", "msrvtt-qa", "okvqa", "clevr",
                              "visual-dialog"}
        assert all(set(s) == {"exact_match", "rouge_l", "n"} and 0 <= s["exact_match"] <= 1 for s in model.values())
    report = Path(run_dir, "report.md").read_text()
    assert "Exact match" in report and "stage2" in report and "(report/loss.png)" in report
    assert Path(run_dir, "report", "loss.png").read_bytes()[:4] == b"\x89PNG"
    # The ablations ran after Stage II (2 CPUs hold one training) and their tables and verdicts are in the report.
    ablations = json.loads(Path(run_dir, "ablations", "results.json").read_text())
    assert [p["value"] for p in ablations["figure9"]["points"]] == [1]
    assert [p["value"] for p in ablations["figure10"]["points"]] == [0]  # Stage I itself: no training
    assert all(isinstance(p["score"], float) and p["n"] > 0 for e in ("figure9", "figure10")
               for p in ablations[e]["points"])
    assert Path(run_dir, "ablations", "figure9.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Ablations" in report and "(ablations/figure9.png)" in report and "## Reproduction" in report
    rows = json.loads(Path(run_dir, "report", "_manifest.json").read_text())["outputs"]["reproduction"]
    assert {r["claim"] for r in rows} >= {"Stage II beats Stage I on held-out tasks", "more training tasks help",
                                          "unseen instructions cost little"}
    assert all(r["verdict"] in ("holds", "does not hold", "inconclusive", "not measured") for r in rows)
    assert all("seeds" in r for r in rows) and "Reproduction" in report and "inconclusive" in report
    s2_manifest = json.loads(Path(run_dir, "stage2", "_manifest.json").read_text())
    assert json.loads(Path(run_dir, "ablations", "_manifest.json").read_text())["started"] >= (
        s2_manifest["started"] + s2_manifest["seconds"])
    for stage in ("stage1", "stage2"):
        assert Path(run_dir, stage, "hf", "model.safetensors").exists()
    serve = json.loads(Path(run_dir, "serve", "_manifest.json").read_text())["outputs"]
    assert serve["health"]["status"] == "ok" and isinstance(serve["check"]["output"], str)
    tune = json.loads(Path(run_dir, "tune", "_manifest.json").read_text())["outputs"]
    assert [t["lr"] for t in tune["trials"]] == [5e-4, 1e-3] and tune["best_lr"] in (5e-4, 1e-3)
    assert tune["lr_source"] == "tune"
    # Stage II starts from Stage I, trains at the searched lr and never trains on held-out tasks.
    s2 = json.loads(Path(run_dir, "stage2", "_manifest.json").read_text())["outputs"]
    assert s2["lr"] == tune["best_lr"] and s2["lr_source"] == "tune"
    assert s2["plan"]["init_checkpoint"].endswith(os.path.join("stage1", "hf"))
    # Stage I starts from the text-only bilingual pretraining of the random-init LLM.
    pretrain = json.loads(Path(run_dir, "pretrain", "_manifest.json").read_text())["outputs"]
    s1 = json.loads(Path(run_dir, "stage1", "_manifest.json").read_text())["outputs"]
    assert pretrain["step"] == 4 and set(pretrain["plan"]["tasks"]) == {"text-en", "text-zh"}
    assert s1["plan"]["init_checkpoint"] == pretrain["checkpoint"]
    assert set(s1["plan"]["tasks"]) == {"coco", "laion"}  # §3.1.1: COCO's captions and LAION's
    laion = json.loads(Path(run_dir, "unify", "_manifest.json").read_text())["outputs"]["stats"]["laion"]
    assert set(laion) == {"train"} and laion["train"]["read"] == laion["train"]["written"] == 8
    assert pretrain["checkpoint"].endswith(os.path.join("pretrain", "hf"))
    assert set(s2["plan"]["tasks"]) == {"coco", "vqa-v2", "coco-goi", "okvqa", "clevr", "visual-dialog"}
    # The paper's variants: each from its own checkpoint on its own tasks, and a row beside stage2 in the
    # paper's tables (Table 6, Chinese, has Ying-VLM_zh's; Table 7, video, Ying-VLM_video's).
    variants = {name: json.loads(Path(run_dir, f"variant_{name}", "_manifest.json").read_text())["outputs"]
                for name in ("llava", "zh", "video")}
    assert set(variants["llava"]["plan"]["tasks"]) == {"llava"}
    assert variants["llava"]["plan"]["init_checkpoint"].endswith(os.path.join("stage1", "hf"))
    assert set(variants["zh"]["plan"]["tasks"]) == {"flickr8k-cn"}
    assert variants["zh"]["plan"]["init_checkpoint"].endswith(os.path.join("stage2", "hf"))
    assert set(variants["video"]["plan"]["tasks"]) == set(s2["plan"]["tasks"]) | {"msrvtt-qa"}
    assert all(v["step"] == 3 and v["lr"] == tune["best_lr"] for v in variants.values())
    # The variants' one worker trained in a Ray task of the job; the stages' two, in worker groups.
    assert all(v["in_process"] for v in variants.values()) and not (s1["in_process"] or s2["in_process"])
    assert "(ying:llava-train pid=" in logs and "(RayTrainWorker pid=" in logs
    for model in ("ying-vlm-llava", "ying-vlm-zh", "ying-vlm-video"):
        assert report.count(f"| {model} |") >= 3, model  # the tasks table and the paper's suites
    tables = report.split("### ")
    for table in ("Table 6", "Table 7"):
        body = next(t for t in tables if t.startswith(table))
        assert all(f"| {m} |" in body for m in ("stage2", "ying-vlm-zh", "ying-vlm-video")), body
    # The contamination guard took out the one VisDial training dialog on an OK-VQA val image.
    qc = json.loads(Path(run_dir, "qc", "_manifest.json").read_text())["outputs"]["counts"]
    assert qc["contamination_blocked"] == {"visual-dialog": 2}


def test_rephrasing_went_through_the_llm_and_its_cache(first_run, llm):
    counts = json.loads(Path(first_run["run_dir"], "rephrase", "_manifest.json").read_text())["outputs"]["counts"]
    # The second run re-sent only the refused ("no") rephrasings; the rest came from the cache.
    assert counts["cache_hits"] > 0 and 0 < counts["requests"] < first_run["requests_first"]
    assert llm.count() > first_run["requests_first"]


def test_every_series_the_dashboards_query_was_exported(first_run):
    """Scraped from Ray's Prometheus endpoint while the runs went on: each series a panel or a
    variable of dashboards/*.json selects (records, rephrasing, training, Ray Serve, Ray's nodes)."""
    assert first_run["scrapes"] > 0
    assert {"ray_ying_records_built_total", "ray_ying_train_loss", "ray_serve_num_http_requests_total"} <= \
        first_run["expected_series"]
    assert not first_run["missing_series"], f"queried by dashboards but never exported: {sorted(first_run['missing_series'])}"


def test_second_run_skips_every_stage(first_run):
    run_dir = first_run["run_dir"]
    before = {s: Path(run_dir, s, "_manifest.json").read_text() for s in STAGES}
    _, logs = _submit(first_run["client"], run_dir, first_run["overrides"])
    for stage in STAGES:
        assert f"[ying] {stage}: up to date" in logs, stage
        assert Path(run_dir, stage, "_manifest.json").read_text() == before[stage]
    assert "running" not in "".join(line for line in logs.splitlines() if line.startswith("[ying] ") and ": " in line)


def test_an_exported_m3it_release_trains_through_stage2(first_run, tmp_path):
    """A run's QC'd records exported with `ying m3it export`, plus a task folder Ying has no adapter
    for, become the next run's data through `data.m3it`: imported as its unify step, not rephrased
    again, and trained through Stage II (the unknown task too)."""
    import shutil
    import subprocess
    import sys

    release = tmp_path / "M3IT"
    subprocess.run([sys.executable, "-m", "ying.cli", "m3it", "export", "--data-dir",
                    str(Path(first_run["run_dir"], "qc")), "--out", str(release)], check=True, cwd=REPO)
    exported = sorted(p.name for p in release.glob("data/*/*") if p.is_dir())
    assert "vqav2" in exported and "coco" in exported
    # A task of the release that Ying has no adapter for: it trains, and the run says so.
    shutil.copytree(release / "data" / "vqa" / "vqav2", release / "data" / "vqa" / "shape-count")
    run_dir = str(tmp_path / "run")
    # Pretraining and the LR search are the first run's subjects: here Stage I starts from the random
    # init and Stage II takes a set lr, two fewer trainings on the way to the release's Stage II. So are
    # worker groups: one worker, whose stages train in Ray tasks (ying.train.stages.fit_stage).
    _, logs = _submit(first_run["client"], run_dir, [*first_run["overrides"], f"data.m3it={release}",
                                                     "train.pretrain.enabled=false", "train.stage2.lr=1e-3",
                                                     "train.num_workers=1"],
                      flags="--until stage2")
    assert "unknown to Ying (trained in Stage II, in no suite): shape-count" in logs
    sources = json.loads(Path(run_dir, "sources", "_manifest.json").read_text())["outputs"]
    assert sources["sources"] == {} and not Path(run_dir, "sources", "coco").exists()  # no raw source read
    unify = json.loads(Path(run_dir, "unify", "_manifest.json").read_text())["outputs"]
    assert unify["m3it"]["unknown"] == ["shape-count"]
    stats = unify["stats"]
    assert all(c["read"] == c["written"] + c["rejected"] for splits in stats.values() for c in splits.values())
    qc_before = json.loads(Path(first_run["run_dir"], "qc", "_manifest.json").read_text())["outputs"]["counts"]
    assert stats["vqa-v2"]["train"]["written"] == qc_before["tasks"]["vqa-v2"]["train"]["passed"]
    rephrase = json.loads(Path(run_dir, "rephrase", "_manifest.json").read_text())["outputs"]["counts"]
    assert rephrase["rephrased"] == 0 and rephrase["requests"] == 0  # the release's answers are final
    s2 = json.loads(Path(run_dir, "stage2", "_manifest.json").read_text())["outputs"]
    assert set(s2["plan"]["tasks"]) == {"coco", "vqa-v2", "coco-goi", "okvqa", "clevr", "visual-dialog", "shape-count"}
    s1 = json.loads(Path(run_dir, "stage1", "_manifest.json").read_text())["outputs"]
    assert set(s1["plan"]["tasks"]) == {"coco", "laion"}  # LAION's captions came through the export too
    assert Path(run_dir, "stage2", "hf", "model.safetensors").exists()
