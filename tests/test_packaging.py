"""Packaging, CI and dashboards stay consistent with the code."""

import json
import re
from pathlib import Path

import pytest
import yaml

from ying import telemetry

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "README.md must start with a ```bash block of set-up commands"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_starts_with_the_two_setup_commands():
    assert readme_commands() == [
        "pip install -c constraints/cpu.txt -e . && python workflows/full.py",
        'pip install -c constraints/cpu.txt -e ".[test]" && python -m pytest -x -q tests',
    ]


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "set -euo pipefail" in ci
    assert "export RAY_AUTH_MODE=disabled" in ci and "export DS_ACCELERATOR=cpu" in ci
    assert readme_commands()[1] in ci.splitlines()


def test_pyproject_declares_package_script_and_pins():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    meta = project["project"]
    assert meta["name"] == "ying" and meta["requires-python"] == ">=3.10"
    assert meta["scripts"] == {"ying": "ying.cli:main"}
    deps = {re.split(r"[\[<>=!~ ]", d, maxsplit=1)[0].lower(): d for d in meta["dependencies"]}
    assert deps["ray"] == "ray[data,train,tune,serve]==2.60.*"
    assert deps["deepspeed"] == "deepspeed==0.19.*"
    assert deps["transformers"] == "transformers>=5,<6"
    assert "pytest" in meta["optional-dependencies"]["test"]
    data = project["tool"]["setuptools"]["package-data"]["ying"]
    assert "configs/*.yaml" in data and "data/instructions/*.json" in data
    pins = [l for l in (ROOT / "constraints" / "cpu.txt").read_text().splitlines() if l and not l.startswith("#")]
    assert pins == ["torch==2.13.0"]


def promql_exprs(dashboard: dict) -> list[str]:
    exprs = []

    def walk(panels):
        for panel in panels:
            exprs.extend(t["expr"] for t in panel.get("targets", []) if "expr" in t)
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        if var.get("type") == "query":
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def test_dashboard_queries_only_metrics_that_telemetry_defines():
    dashboard = json.loads((ROOT / "dashboards" / "ying.json").read_text())
    used = set()
    for expr in promql_exprs(dashboard):
        used |= set(re.findall(r"\bray_ying_[a-zA-Z0-9_]+", expr))
    assert used, "the dashboard queries no ying metrics"
    unknown = used - telemetry.exported_names()
    assert not unknown, f"dashboard queries metrics telemetry.py doesn't define: {sorted(unknown)}"
    uncharted = telemetry.exported_names() - used
    assert not uncharted, f"metrics defined in telemetry.py but not charted: {sorted(uncharted)}"


def test_exported_names_follow_ray_rules():
    assert telemetry.exported_name("ying_records_built") == "ray_ying_records_built_total"
    assert telemetry.exported_name("ying_train_loss") == "ray_ying_train_loss"
    for name in telemetry.METRICS:
        assert re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", name), name


def test_metric_accessors_are_lazy_and_cached():
    assert telemetry.records_counter() is telemetry.records_counter()
    telemetry.records_counter().inc(1, tags={"task": "coco"})
    telemetry.train_loss_gauge().set(1.5, tags={"stage": "stage1"})


def test_grafana_provisioning_points_at_the_dashboards_folder():
    prov = yaml.safe_load((ROOT / "dashboards" / "provisioning.yaml").read_text())
    (provider,) = prov["providers"]
    assert provider["type"] == "file" and provider["name"] != "Ray"
    assert provider["options"]["path"] == "${YING_DASHBOARDS_DIR}"
