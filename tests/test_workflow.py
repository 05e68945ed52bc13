"""The DAG runner: Ray tasks passing manifests, skip on re-run, re-run on change.

Honest fingerprints: `--force X` re-runs X and what depends on it, execution-only settings change
nothing, and a change to the code a stage runs re-runs that stage (comments and docstrings don't).
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ying.code_version import code_versions
from ying.config import execution_only_paths, load_config
from ying.pipeline import STAGES
from ying.workflow import Stage, pipeline_status, plan_fingerprints, run_pipeline, stage_fingerprint

REPO = Path(__file__).resolve().parents[1]


def _stages(log_path, code=None):
    code = code or {}

    def make(name):
        def run(ctx):
            with open(log_path, "a") as f:
                f.write(name + "\n")
            upstream = {d: ctx.output_of(d, "value") for d in ctx.inputs}
            return {"value": f"{name}({','.join(f'{k}={v}' for k, v in sorted(upstream.items()))})"}
        return run

    return [
        Stage("a", make("a"), [], ["run.seed"], code=code.get("a", [])),
        Stage("b", make("b"), ["a"], ["train.stage1.lr", "rephrase"], code=code.get("b", [])),
        Stage("c", make("c"), ["a", "b"], ["eval"], code=code.get("c", [])),
    ]


def _ran(log_path):
    if not os.path.exists(log_path):
        return []
    with open(log_path) as f:
        return f.read().split()


def test_stages_pass_outputs_and_skip_when_nothing_changed(ray_cluster, tmp_path):
    log = str(tmp_path / "log")
    cfg = load_config("tiny", overrides=[f"run.run_dir={tmp_path / 'run'}"])
    first = run_pipeline(_stages(log), cfg)
    assert _ran(log) == ["a", "b", "c"]
    assert first["c"]["outputs"]["value"] == "c(a=a(),b=b(a=a()))"
    manifest = json.loads((tmp_path / "run" / "b" / "_manifest.json").read_text())
    assert manifest["inputs"] == {"a": first["a"]["fingerprint"]}
    assert manifest["config"]["train.stage1.lr"] == 5e-4 and manifest["input_runs"] == {"a": first["a"]["run_id"]}

    again = run_pipeline(_stages(log), cfg)
    assert _ran(log) == ["a", "b", "c"]  # nothing re-ran
    assert all(m["skipped"] for m in again.values())
    assert again["c"]["outputs"] == first["c"]["outputs"]


def test_a_config_change_reruns_that_stage_and_what_depends_on_it(ray_cluster, tmp_path):
    log = str(tmp_path / "log")
    run_dir = f"run.run_dir={tmp_path / 'run'}"
    run_pipeline(_stages(log), load_config("tiny", overrides=[run_dir]))
    changed = run_pipeline(_stages(log), load_config("tiny", overrides=[run_dir, "train.stage1.lr=1e-3"]))
    assert _ran(log) == ["a", "b", "c", "b", "c"]
    assert changed["a"]["skipped"] and not changed["b"]["skipped"] and not changed["c"]["skipped"]
    # A setting no stage reads changes nothing.
    run_pipeline(_stages(log), load_config("tiny", overrides=[run_dir, "train.stage1.lr=1e-3", "serve.port=9999"]))
    assert _ran(log) == ["a", "b", "c", "b", "c"]


def test_a_failed_stage_leaves_no_manifest_and_the_next_run_resumes_there(ray_cluster, tmp_path):
    log = str(tmp_path / "log")
    cfg = load_config("tiny", overrides=[f"run.run_dir={tmp_path / 'run'}"])
    stages = _stages(log)

    def boom(ctx):
        raise RuntimeError("disk full")

    broken = [stages[0], Stage("b", boom, ["a"], ["train.stage1.lr"]), stages[2]]
    with pytest.raises(Exception, match="disk full"):
        run_pipeline(broken, cfg)
    assert not (tmp_path / "run" / "b" / "_manifest.json").exists()
    run_pipeline(stages, cfg)
    assert _ran(log) == ["a", "b", "c"]  # "a" was not redone


def test_every_shipped_stage_fingerprints_its_config():
    cfg = load_config("tiny")
    names = [s.name for s in STAGES]
    assert names == ["sources", "unify", "rephrase", "qc", "pretrain", "stage1", "tune", "stage2", "variant_llava",
                     "variant_video", "variant_zh", "eval", "ablations", "report", "serve"]
    fake_inputs = {}
    for stage in STAGES:
        fp = stage_fingerprint(stage, cfg, {d: fake_inputs[d] for d in stage.deps})
        fake_inputs[stage.name] = {"fingerprint": fp}
    assert len({m["fingerprint"] for m in fake_inputs.values()}) == len(STAGES)


def test_force_reruns_the_stage_and_everything_downstream(ray_cluster, tmp_path):
    log = str(tmp_path / "log")
    cfg = load_config("tiny", overrides=[f"run.run_dir={tmp_path / 'run'}"])
    run_pipeline(_stages(log), cfg)
    forced = run_pipeline(_stages(log), cfg, force={"b"})
    assert _ran(log) == ["a", "b", "c", "b", "c"]
    assert forced["a"]["skipped"] and not forced["b"]["skipped"] and not forced["c"]["skipped"]
    run_pipeline(_stages(log), cfg)  # and then all is up to date again
    assert _ran(log) == ["a", "b", "c", "b", "c"]


def test_a_forced_run_cut_short_still_reruns_downstream_next_time(ray_cluster, tmp_path):
    log = str(tmp_path / "log")
    cfg = load_config("tiny", overrides=[f"run.run_dir={tmp_path / 'run'}"])
    stages = _stages(log)
    run_pipeline(stages, cfg)

    def boom(ctx):
        raise RuntimeError("node lost")

    with pytest.raises(Exception, match="node lost"):
        run_pipeline([stages[0], stages[1], Stage("c", boom, ["a", "b"], ["eval"])], cfg, force={"b"})
    # c's manifest is from before b re-ran: c is stale although nothing is forced now.
    assert [r["state"] for r in pipeline_status(stages, cfg)] == ["done", "done", "stale"]
    assert pipeline_status(stages, cfg)[2]["reasons"] == ["input b re-ran since"]
    run_pipeline(stages, cfg)
    assert _ran(log) == ["a", "b", "c", "b", "c"]


def test_execution_only_settings_rerun_nothing(ray_cluster, tmp_path):
    log = str(tmp_path / "log")
    run_dir = f"run.run_dir={tmp_path / 'run'}"
    run_pipeline(_stages(log), load_config("tiny", overrides=[run_dir]))
    # Stage b reads the whole rephrase section: actor counts, batch sizes, concurrency, progress
    # intervals and the cache location only change how it runs.
    how = ["rephrase.actors=7", "rephrase.batch_size=3", "rephrase.max_concurrency=2",
           "rephrase.progress_interval_s=1", f"rephrase.cache_dir={tmp_path / 'elsewhere'}", "run.shared_fs=true"]
    again = run_pipeline(_stages(log), load_config("tiny", overrides=[run_dir, *how]))
    assert _ran(log) == ["a", "b", "c"] and all(m["skipped"] for m in again.values())
    # What it produces does change with the model.
    run_pipeline(_stages(log), load_config("tiny", overrides=[run_dir, *how, "rephrase.model=other-llm"]))
    assert _ran(log) == ["a", "b", "c", "b", "c"]


def test_no_shipped_stage_fingerprints_an_execution_only_setting():
    cfg = load_config("tiny")
    base = {n: p["fingerprint"] for n, p in plan_fingerprints(STAGES, cfg).items()}
    paths = execution_only_paths()
    assert {"rephrase.actors", "rephrase.batch_size", "rephrase.progress_interval_s", "eval.num_actors"} <= paths
    tree = load_config("tiny").to_dict()

    def other_value(dotted):  # a valid value unlike the preset's
        value = tree
        for key in dotted.split("."):
            value = value[key]
        if isinstance(value, bool) and dotted != "train.zero_init":  # (zero_init needs ZeRO-3: its own test)
            return str(not value).lower()
        return {"rephrase.cache_dir": "/elsewhere", "eval.cache_dir": "/elsewhere", "model.attn_implementation": "eager",
                "serve.autoscaling": "{min_replicas: 1, max_replicas: 2}", "serve.max_ongoing_requests": 8,
                "train.zero_init": "false"}.get(dotted, 3)

    overrides = [f"{p}={other_value(p)}" for p in sorted(paths)]
    changed = {n: p["fingerprint"] for n, p in plan_fingerprints(STAGES, load_config("tiny", overrides=overrides)).items()}
    assert changed == base
    # While a setting that changes results changes the stage reading it and all after it.
    other = plan_fingerprints(STAGES, load_config("tiny", overrides=["rephrase.model=other-llm"]))
    assert [n for n in base if other[n]["fingerprint"] != base[n]] == [
        "rephrase", "qc", "stage1", "tune", "stage2", "variant_llava", "variant_video", "variant_zh", "eval", "ablations",
        "report", "serve"]


@pytest.fixture
def fix_package(tmp_path, monkeypatch):
    """A small package outside Ying standing in for the code stages run: ``fixpkg.core`` (which
    imports ``fixpkg.helpers``) and ``fixpkg.other``."""
    root = tmp_path / "code"
    pkg = root / "fixpkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "core.py").write_text("from .helpers import scale\n\ndef answer(x):\n    return scale(x) + 1\n")
    (pkg / "helpers.py").write_text('"""Helpers."""\n\ndef scale(x):\n    return 2 * x\n')
    (pkg / "other.py").write_text("def seed():\n    return 0\n")
    monkeypatch.syspath_prepend(str(root))
    return pkg


def test_a_code_change_reruns_the_stages_that_run_it(ray_cluster, tmp_path, fix_package):
    log = str(tmp_path / "log")
    cfg = load_config("tiny", overrides=[f"run.run_dir={tmp_path / 'run'}"])
    code = {"a": ["fixpkg.other"], "b": ["fixpkg.core"]}
    run_pipeline(_stages(log, code), cfg)
    assert set(json.loads((tmp_path / "run" / "b" / "_manifest.json").read_text())["code"]) >= {
        "fixpkg.core", "fixpkg.helpers"}

    # A comment, a docstring and reformatting change nothing.
    helpers = fix_package / "helpers.py"
    helpers.write_text('"""Helpers, now documented at length."""\n\n\ndef scale(x):  # doubles\n    return 2*x\n')
    run_pipeline(_stages(log, code), cfg)
    assert _ran(log) == ["a", "b", "c"]

    # A fix in a module b runs (through an import) re-runs b and c, not a.
    helpers.write_text("def scale(x):\n    return 3 * x\n")
    assert [r["state"] for r in pipeline_status(_stages(log, code), cfg)] == ["done", "stale", "stale"]
    assert pipeline_status(_stages(log, code), cfg)[1]["reasons"] == ["code changed: fixpkg.helpers"]
    rerun = run_pipeline(_stages(log, code), cfg)
    assert _ran(log) == ["a", "b", "c", "b", "c"] and rerun["a"]["skipped"]


def test_status_says_done_stale_with_the_reason_or_missing(ray_cluster, tmp_path):
    log = str(tmp_path / "log")
    run_dir = f"run.run_dir={tmp_path / 'run'}"
    stages = _stages(log)
    cfg = load_config("tiny", overrides=[run_dir])
    assert [r["state"] for r in pipeline_status(stages, cfg)] == ["missing"] * 3
    run_pipeline(stages, cfg, until="b")
    assert [r["state"] for r in pipeline_status(stages, cfg)] == ["done", "done", "missing"]
    changed = load_config("tiny", overrides=[run_dir, "train.stage1.lr=1e-3"])
    rows = pipeline_status(stages, changed)
    assert [r["state"] for r in rows] == ["done", "stale", "missing"]
    assert rows[1]["reasons"] == ["config changed: train.stage1.lr"]

    out = subprocess.run([sys.executable, "-m", "ying.cli", "status", "--run-dir", str(tmp_path / "run"),
                          "--set", "train.stage1.lr=1e-3"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    # The shipped stage table: nothing of it ran in this run dir.
    assert "sources   missing" in out.stdout and "serve     missing" in out.stdout


def test_shipped_stages_version_the_code_they_run():
    unify = code_versions([], run=STAGES[1].run)
    assert {"ying.data.build", "ying.data.tasks.vqa_v2", "ying.data.visual_prompt"} <= set(unify)
    assert "ying/data/instructions/vqa-v2.json" in unify  # an instruction pool is part of what unify runs
    stage1 = code_versions([], run=STAGES[5].run)
    assert {"ying.train.loop", "ying.model.vlm"} <= set(stage1)
    assert not any(m.startswith(("ying.eval", "ying.serve")) for m in stage1)
    assert "ying.config" not in stage1 and "ying.storage" not in stage1  # plumbing
    by_name = {s.name: s for s in STAGES}
    evaluation = code_versions([], run=by_name["eval"].run)
    assert {"ying.eval.metrics", "ying.eval.evaluate"} <= set(evaluation)
    report = code_versions([], run=by_name["report"].run)
    assert {"ying.eval.run_report", "ying.eval.ablation_report"} <= set(report)
    assert {"ying.tune.ablations", "ying.train.loop"} <= set(code_versions([], run=by_name["ablations"].run))


def test_a_config_error_is_one_message_before_ray_starts(tmp_path):
    """`--preset paper` names 40 real releases; without them the run stops at once, saying how to fix it."""
    out = subprocess.run([sys.executable, "workflows/full.py", "--preset", "paper", "--run-dir", str(tmp_path / "r")],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr + out.stdout and "Started a local Ray instance" not in out.stderr
    # Every problem at once, one line each: the missing releases, and the LLM folder that isn't there.
    head, *problems = out.stderr.strip().splitlines()
    assert head == "ying: this config can't run:" and all(p.startswith("  - ") for p in problems), out.stderr
    assert any("data.sources.coco=" in p and "miniworld.enabled=true" in p for p in problems)
    assert any("model.llm_path=/models/Ziya-LLaMA-13B-v1-merged: no such directory" in p for p in problems)
