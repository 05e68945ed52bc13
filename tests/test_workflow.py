"""The DAG runner: Ray tasks passing manifests, skip on re-run, re-run on change."""

import json
import os

import pytest

from ying.config import load_config
from ying.pipeline import STAGES
from ying.workflow import Stage, run_pipeline, stage_fingerprint


def _stages(log_path):
    def make(name):
        def run(ctx):
            with open(log_path, "a") as f:
                f.write(name + "\n")
            upstream = {d: ctx.output_of(d, "value") for d in ctx.inputs}
            return {"value": f"{name}({','.join(f'{k}={v}' for k, v in sorted(upstream.items()))})"}
        return run

    return [
        Stage("a", make("a"), [], ["run.seed"]),
        Stage("b", make("b"), ["a"], ["train.stage1.lr"]),
        Stage("c", make("c"), ["a", "b"], ["eval"]),
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
    assert manifest["inputs"] == {"a": first["a"]["fingerprint"]} and manifest["config"] == {"train.stage1.lr": 5e-4}

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
    assert names == ["sources", "unify", "rephrase", "qc", "stage1", "stage2", "tune", "eval", "serve"]
    fake_inputs = {}
    for stage in STAGES:
        fp = stage_fingerprint(stage, cfg, {d: fake_inputs[d] for d in stage.deps})
        fake_inputs[stage.name] = {"fingerprint": fp}
    assert len({m["fingerprint"] for m in fake_inputs.values()}) == len(STAGES)
