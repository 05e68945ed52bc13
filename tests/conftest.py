"""Shared fixtures.

Ray's token auth is on by default for a new local cluster in Ray 2.60; tests turn it off for the
whole process tree (set before any Ray process starts, so workers inherit it). DeepSpeed is
pinned to its CPU accelerator for the same reason.
"""

import os

import pytest

from ying.config import load_config
from ying.train import controller_env

os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ["DS_ACCELERATOR"] = "cpu"
# As a tiny run's workers get it (ying.cli's runtime_env): Ray Train's controller polls every 0.5 s,
# not 2, and starts no preemption watcher. A run of another preset sets its own in its runtime_env.
os.environ.update(controller_env(load_config("tiny").train))


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole session (2 CPUs, dashboard on: Tune needs its State API)."""
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["DS_ACCELERATOR"] = "cpu"
    import ray

    for attempt in range(3):
        try:
            context = ray.init(num_cpus=2, include_dashboard=True, ignore_reinit_error=True, log_to_driver=False)
            break
        except Exception as e:  # Ray waits only 30 s for its raylet: a busy machine can need more
            if "timed out during startup" not in str(e) or attempt == 2:
                raise
            ray.shutdown()
    ray.dashboard_url = f"http://{context.dashboard_url}"  # for tests that submit Ray Jobs
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_endpoint():
    """One S3 protocol server (moto) on loopback for the session; yields a function that makes a bucket.

    botocore, and so s3fs, read the endpoint and credentials from the environment; s3fs caches its
    filesystem objects, so the cache is cleared when the endpoint appears and when it goes.
    """
    import boto3
    import s3fs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    mp = pytest.MonkeyPatch()
    for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        mp.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    client = boto3.client("s3", endpoint_url=endpoint)

    def make_bucket(name: str) -> str:
        client.create_bucket(Bucket=name)
        s3fs.S3FileSystem.clear_instance_cache()
        return f"s3://{name}"

    yield make_bucket
    mp.undo()
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()
