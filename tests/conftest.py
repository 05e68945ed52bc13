"""Shared fixtures.

Ray's token auth is on by default for a new local cluster in Ray 2.60; tests turn it off for the
whole process tree (set before any Ray process starts, so workers inherit it). DeepSpeed is
pinned to its CPU accelerator for the same reason.
"""

import os

import pytest

os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ["DS_ACCELERATOR"] = "cpu"


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole session (2 CPUs, dashboard on: Tune needs its State API)."""
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["DS_ACCELERATOR"] = "cpu"
    import ray

    context = ray.init(num_cpus=2, include_dashboard=True, ignore_reinit_error=True, log_to_driver=False)
    ray.dashboard_url = f"http://{context.dashboard_url}"  # for tests that submit Ray Jobs
    yield ray
    ray.shutdown()
