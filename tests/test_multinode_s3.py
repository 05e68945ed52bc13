"""One run across nodes: a Ray cluster of three `ray start` nodes on this machine (a CPU-0 head, as
in cluster.yaml, and two 1-CPU workers, so the two training workers sit on different nodes) runs
the DAG through Stage II with an s3:// run dir on a moto server.

Every node of this cluster shares one disk, so "no node wrote stage outputs to its local disk"
is checked where a node could write them: the cluster's temp folder (Ray's session, spilling,
every tempfile), the HOME of its processes (~/ray_results) and the driver's working directory.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ray_processes import RayProcessCluster, temporary_cluster

REPO = Path(__file__).resolve().parents[1]

# Two tasks, two training steps per stage: what matters here is where things are written.
TINY = [
    "data.tasks=[coco, vqa-v2]", "data.held_out=[]", "rephrase.tasks=[vqa-v2]",
    "miniworld.n_images={coco/train: 16, coco/validation: 4, coco/test: 4, vqa-v2/train: 8, vqa-v2/validation: 4}",
    "miniworld.n_videos={}",
    "train.pretrain.enabled=false",  # (the pretrain stage is test_pretrain's and test_full_dag's)
    "train.stage1.max_steps=2", "train.stage1.warmup_steps=1", "train.stage1.batch_size=4",
    "train.stage2.max_steps=2", "train.stage2.warmup_steps=1", "train.stage2.batch_size=4",
    # The LR search before Stage II: one 2-step trial, Tune's storage in the bucket too.
    "tune.lrs=[5e-4]", "tune.trial_steps=2", "tune.report_every=1", "tune.val_examples=4",
    "tune.max_concurrent_trials=1",
]
STAGE_OUTPUT_NAMES = {"_manifest.json", "rejects.jsonl", "qc_counts.json", "review.html", "stats.json",
                      "model.safetensors", "ying_model.json"}


def _stage_outputs_under(root: Path) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and (path.name in STAGE_OUTPUT_NAMES or path.suffix == ".parquet"):
            found.append(str(path))
        elif path.is_dir() and path.name in {"ray_train", "ray_results"}:
            found.append(str(path))
    return found


@pytest.fixture(scope="module")
def cluster(s3_endpoint, tmp_path_factory):
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(p for p in [str(REPO), os.environ.get("PYTHONPATH", "")] if p)}
    # The nodes reach the bucket with the credentials in their environment (an instance profile
    # plays that part on AWS; see cluster.yaml).
    with temporary_cluster("ymn", env, tmp_path_factory.mktemp("ray-logs"), head_cpus=0,
                           worker_cpus=(1, 1), home=True) as c:
        yield c, c.root


def _run(c: RayProcessCluster, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """workflows/full.py as the driver, in its own process (one process joins one cluster)."""
    return subprocess.run([sys.executable, str(REPO / "workflows" / "full.py"), "--address", c.address, *args],
                          cwd=cwd, env=c.env, capture_output=True, text=True, timeout=1800)


def test_a_local_run_dir_is_refused_on_several_nodes(cluster, tmp_path):
    c, root = cluster
    out = _run(c, tmp_path, "--run-dir", str(tmp_path / "run"), "--until", "sources")
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert "spans 3 nodes" in out.stderr and "s3://" in out.stderr and "run.shared_fs=true" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "run").exists()


def test_dag_through_stage2_on_three_nodes_writes_only_to_the_bucket(cluster, s3_endpoint, tmp_path):
    import s3fs

    c, root = cluster
    bucket = s3_endpoint("ying-multinode")
    driver_cwd = root / "driver"
    driver_cwd.mkdir()
    args = ["--run-dir", f"{bucket}/run", "--until", "stage2"]
    for o in TINY:
        args += ["--set", o]
    out = _run(c, driver_cwd, *args)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "3 node(s)" in out.stdout

    fs = s3fs.S3FileSystem()
    run = f"{bucket[len('s3://'):]}/run"
    for stage in ("sources", "unify", "rephrase", "qc", "stage1", "tune", "stage2"):
        assert fs.exists(f"{run}/{stage}/_manifest.json"), stage
    assert fs.glob(f"{run}/qc/records/train/*.parquet") and fs.exists(f"{run}/qc/review.html")
    assert fs.exists(f"{run}/stage2/hf/model.safetensors")
    # Ray Train's and Tune's own storage (checkpoints, run and experiment state) is under the run dir too.
    assert fs.glob(f"{run}/stage1/ray_train/stage1-*/**")
    assert fs.glob(f"{run}/tune/experiments/lr_search-*/**") and fs.glob(f"{run}/tune/train_runs/**")

    leaked = _stage_outputs_under(root)  # the nodes' temp folder, their HOME and the driver's cwd
    assert leaked == [], leaked
