"""Jobs with auth, exactly as README's cluster section says: a head started by `ray start --head`
with token auth, and `ray job submit --working-dir . -- python workflows/full.py --run-dir s3://...
--until qc`, the client holding the token and RAY_AUTH_MODE=token.

The nodes have no S3 credentials of their own here; the job brings them in its runtime_env
(`--runtime-env-json`), the user's choice documented in README (on AWS, cluster.yaml's instance
profiles give every node S3 access and nothing travels with the job).
"""

import json
import os
import secrets
import subprocess
from pathlib import Path

import pytest

from ray_processes import RayProcessCluster, temporary_cluster

REPO = Path(__file__).resolve().parents[1]

DATA_ONLY = [
    "data.tasks=[coco, vqa-v2]", "data.held_out=[]", "rephrase.tasks=[vqa-v2]",
    "miniworld.n_images={coco/train: 8, coco/validation: 4, vqa-v2/train: 6, vqa-v2/validation: 4}",
    "miniworld.n_videos={}",
]


@pytest.fixture(scope="module")
def token_cluster(tmp_path_factory):
    token_path = tmp_path_factory.mktemp("token") / "auth_token"
    token_path.write_text(secrets.token_hex(32))  # what `ray get-auth-token --generate` makes
    token_path.chmod(0o600)
    # Nothing S3 on the node: credentials come with the job. Nor Ying on PYTHONPATH: the job's
    # working dir brings the code (the node has the package's dependencies installed).
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "PYTHONPATH"}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path))
    with temporary_cluster("yja", env, tmp_path_factory.mktemp("ray-logs"), head_cpus=2) as cluster:
        yield cluster, token_path


def _client_env(cluster: RayProcessCluster, token_path: Path | None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_AUTH"))}
    env["RAY_TMPDIR"] = cluster.env["RAY_TMPDIR"]
    if token_path is not None:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path))
    return env


def _submit(cluster, token_path, run_dir: str, runtime_env: dict | None) -> subprocess.CompletedProcess:
    command = ["ray", "job", "submit", "--address", cluster.dashboard_url, "--working-dir", "."]
    if runtime_env is not None:
        command += ["--runtime-env-json", json.dumps(runtime_env)]
    command += ["--", "python", "workflows/full.py", "--run-dir", run_dir, "--until", "qc"]
    for o in DATA_ONLY:
        command += ["--set", o]  # `ray job submit` quotes the entrypoint's words itself (shlex.join)
    return subprocess.run(command, cwd=REPO, env=_client_env(cluster, token_path),
                          capture_output=True, text=True, timeout=1800)


def _aws_runtime_env() -> dict:
    keys = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    return {"env_vars": {k: os.environ[k] for k in keys}}


def test_submit_without_the_token_is_refused(token_cluster, tmp_path):
    cluster, _ = token_cluster
    out = _submit(cluster, None, "s3://nowhere/run", None)
    assert out.returncode != 0
    assert "AuthenticationError" in out.stderr and "RAY_AUTH_MODE is currently" in out.stderr, out.stderr[-2000:]


def test_job_with_a_local_run_dir_is_refused(token_cluster, tmp_path):
    cluster, token_path = token_cluster
    out = _submit(cluster, token_path, str(tmp_path / "run"), None)
    logs = out.stdout + out.stderr
    assert out.returncode != 0 and "run.run_dir=" in logs and "s3://" in logs and "run.shared_fs=true" in logs
    assert "Traceback" not in logs and not (tmp_path / "run").exists()


def test_job_submit_with_token_builds_the_dataset_in_the_bucket(token_cluster, s3_endpoint):
    import s3fs

    cluster, token_path = token_cluster
    bucket = s3_endpoint("ying-job")
    out = _submit(cluster, token_path, f"{bucket}/run", _aws_runtime_env())
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "succeeded" in out.stdout + out.stderr
    fs = s3fs.S3FileSystem()
    for stage in ("sources", "unify", "rephrase", "qc"):
        assert fs.exists(f"ying-job/run/{stage}/_manifest.json"), stage
    assert fs.glob("ying-job/run/qc/records/train/*.parquet")
    assert not fs.exists("ying-job/run/stage1")  # --until qc
    # The secret went where the user put it (the job's runtime_env), never into the run's files.
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    manifest = fs.cat("ying-job/run/qc/_manifest.json").decode()
    assert secret not in manifest
