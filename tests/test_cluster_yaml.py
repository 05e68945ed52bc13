"""cluster.yaml against Ray's own cluster-launcher schema, offline (no cloud calls, no SSH), and
what the docs say about reaching it."""

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"


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


def test_every_node_type_has_s3_access(prepared):
    """An s3:// run dir is written from every node: Ray's AWS bootstrap gives a default profile
    to the head only (and none when the head names its own), so each node type names one."""
    types = prepared["available_node_types"]
    profiles = {}
    for name, node_type in types.items():
        profile = node_type["node_config"].get("IamInstanceProfile")
        assert profile and (profile.get("Name") or profile.get("Arn")), f"{name} has no IAM instance profile"
        profiles[name] = profile.get("Name") or profile.get("Arn")
    assert profiles["gpu_worker"] == profiles["cpu_worker"] != profiles["head"]
    # The comment that says how to create them names S3 access for both and PassRole for the head.
    text = CLUSTER_YAML.read_text()
    for needed in ("s3:GetObject", "s3:PutObject", "s3:ListBucket", "iam:PassRole", profiles["head"],
                   profiles["cpu_worker"]):
        assert needed in text, needed


def test_every_node_installs_this_package(prepared):
    """One package, synced from the checkout `ray up` runs in, installed the same way everywhere
    (only the torch build differs), so a job's code and the nodes' dependencies are one version."""
    def installs(commands):
        return [c for c in commands if "pip install" in c and "-e ~/ying" in c]

    assert prepared["file_mounts"]["~/ying"] == "."
    setups = {"head": installs(prepared["head_setup_commands"])}
    for name in ("gpu_worker", "cpu_worker"):
        setups[name] = installs(prepared["available_node_types"][name]["worker_setup_commands"])
    assert all(len(commands) == 1 for commands in setups.values()), setups
    # CPU nodes pin the CPU torch wheel; GPU nodes must not. Nothing else may differ.
    assert "constraints/cpu.txt" in setups["cpu_worker"][0] and "constraints/cpu.txt" not in setups["gpu_worker"][0]
    assert setups["head"] == setups["cpu_worker"]
    strip = re.compile(r"--extra-index-url \S+ |-c \S+ ")
    assert len({strip.sub("", c[0]) for c in setups.values()}) == 1, setups


def _submit_lines(text: str) -> list[str]:
    """The `ray job submit` commands of a document (continuation lines joined)."""
    return [line for line in text.replace("\\\n", " ").splitlines() if re.search(r"ray job submit\s+-", line)]


def test_dashboard_binding_and_how_to_reach_it_agree_everywhere(prepared):
    """The head binds the dashboard to its own 127.0.0.1; `ray dashboard cluster.yaml` tunnels it
    to this machine's 127.0.0.1:8265. Every document says so, and no document submits to the head."""
    assert "--dashboard-host=127.0.0.1" in " ".join(prepared["head_start_ray_commands"])
    docs = {
        "cluster.yaml": CLUSTER_YAML.read_text(),
        "workflows/full.py": (ROOT / "workflows" / "full.py").read_text(),
        "README.md": (ROOT / "README.md").read_text().split("## Running on a cluster", 1)[1].split("\n## ", 1)[0],
    }
    for name, text in docs.items():
        lines = _submit_lines(text)
        assert lines, f"{name} shows no `ray job submit`"
        for line in lines:
            assert "--address http://127.0.0.1:" in line and "RAY_AUTH_MODE=token" in line, (name, line)
        assert "ray dashboard cluster.yaml" in text, name
        assert not re.search(r"HEAD(_IP)?:8265", text), name


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
