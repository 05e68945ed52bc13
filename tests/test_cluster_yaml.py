"""cluster.yaml against Ray's own cluster-launcher schema, offline (no cloud calls, no SSH)."""

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


def load_raw() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def prepared() -> dict:
    cfg = prepare_config(load_raw())
    validate_config(cfg)
    return cfg


def test_validates_against_ray_schema(prepared):
    assert prepared["cluster_name"] == "ying"
    assert prepared["provider"]["type"] == "aws"


def test_node_types_have_intended_resources(prepared):
    types = prepared["available_node_types"]
    assert prepared["head_node_type"] == "head"
    assert types["head"]["resources"] == {"CPU": 0}, "the head must schedule no work"
    gpu = types["gpu_worker"]["resources"]
    assert gpu.get("GPU") == 8 and gpu.get("ying_gpu_node") == 1, gpu
    cpu = types["cpu_worker"]["resources"]
    assert cpu.get("CPU", 0) > 0 and "GPU" not in cpu and cpu.get("ying_cpu_node") == 1, cpu
    assert sum(t.get("min_workers", 0) for t in types.values()) <= prepared["max_workers"]


def test_every_node_installs_this_package(prepared):
    def installs(commands):
        return any("pip install" in c and "-e ~/ying" in c for c in commands)

    assert prepared["file_mounts"]["~/ying"] == "."
    assert installs(prepared["head_setup_commands"])
    for name in ("gpu_worker", "cpu_worker"):
        assert installs(prepared["available_node_types"][name]["worker_setup_commands"]), name
    # CPU nodes pin the CPU torch wheel; GPU nodes must not.
    assert "constraints/cpu.txt" in " ".join(prepared["available_node_types"]["cpu_worker"]["worker_setup_commands"])
    assert "constraints/cpu.txt" not in " ".join(prepared["available_node_types"]["gpu_worker"]["worker_setup_commands"])


def test_no_nightly_wheel_and_start_commands_are_ours(prepared):
    every_command = "\n".join(
        prepared["setup_commands"]
        + prepared["head_setup_commands"]
        + prepared["worker_setup_commands"]
        + prepared["head_start_ray_commands"]
        + prepared["worker_start_ray_commands"]
    )
    assert "ray-wheels" not in every_command and "dev0" not in every_command
    head_start = " ".join(prepared["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start


def test_token_auth_on_every_node(prepared):
    assert prepared["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = " ".join(prepared[key])
        assert "export RAY_AUTH_MODE=token" in start, key
        assert start.index("RAY_AUTH_MODE=token") < start.index("ray start"), key


@pytest.mark.parametrize(
    "breakage, error, match",
    [
        pytest.param(lambda c: c.update(not_a_ray_key=1), jsonschema.ValidationError, "not_a_ray_key", id="unknown-top-level-key"),
        pytest.param(lambda c: c.pop("provider"), KeyError, "provider", id="missing-provider"),
        pytest.param(
            lambda c: c["available_node_types"]["gpu_worker"].update(resourcez={}),
            jsonschema.ValidationError,
            "resourcez",
            id="typo-in-node-type",
        ),
        pytest.param(lambda c: c.update(head_node_type="nope"), ValueError, "head_node_type", id="unknown-head-type"),
        pytest.param(lambda c: c.update(max_workers=0), ValueError, "min_workers", id="min-workers-over-max"),
    ],
)
def test_broken_copies_are_rejected(breakage, error, match):
    cfg = copy.deepcopy(load_raw())
    breakage(cfg)
    with pytest.raises(error, match=match):
        validate_config(prepare_config(cfg))
