"""The config tree: shipped presets are valid, mistakes are caught at load time with their path."""

import os

import pytest

from ying.config import ConfigError, PRESETS_DIR, load_config
from ying.data.tasks import TASKS


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
def test_every_shipped_preset_loads_and_names_known_tasks(preset):
    # paper-cpu refuses to load without its checkpoints (test_paper_cpu runs it on real ones).
    paths = ["model.blip2_path=/ckpt/blip2", "model.llm_path=/ckpt/llm"] if preset == "paper-cpu" else []
    cfg = load_config(preset, overrides=paths)
    assert set(cfg.data.tasks) <= set(TASKS), set(cfg.data.tasks) - set(TASKS)
    assert set(cfg.data.held_out) <= set(cfg.data.tasks)
    for stage in (cfg.train.stage1, cfg.train.stage2):
        assert stage.trainable and stage.batch_size % cfg.train.num_workers == 0


def test_presets_differ_only_in_values_not_in_shape():
    tiny, paper = load_config("tiny").to_dict(), load_config("paper").to_dict()
    paper_cpu = load_config("paper-cpu", overrides=["model.blip2_path=/b", "model.llm_path=/l"]).to_dict()

    def keys(tree, prefix=""):
        out = set()
        for k, v in tree.items():
            # Free-form maps (sizes per dataset, sources) may hold different keys.
            if isinstance(v, dict) and k not in ("n_images", "n_videos", "sources"):
                out |= keys(v, f"{prefix}{k}.")
            else:
                out.add(prefix + k)
        return out

    assert keys(tiny) == keys(paper) == keys(paper_cpu)


def test_unknown_key_and_bad_values_are_all_reported_with_their_path(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  stage1:\n    lrr: 1.0\n  num_workers: two\n")
    with pytest.raises(ConfigError) as err:
        load_config("tiny", bad)
    text = str(err.value)
    assert "train.stage1.lrr" in text and "train.num_workers" in text and str(bad) in text


def test_conflicting_options_name_the_fix():
    with pytest.raises(ConfigError, match=r"batch_size=32 must be micro_batch_size .* x train.num_workers \(3\)"):
        load_config("tiny", overrides=["train.num_workers=3"])
    with pytest.raises(ConfigError, match=r"variants.zh.num_workers=3 must divide train.stage2.batch_size \(32\)"):
        load_config("tiny", overrides=["variants.enabled=[zh]", "variants.zh.num_workers=3"])
    assert load_config("tiny", overrides=["variants.enabled=[zh]", "variants.zh.num_workers=1"]).variants.zh.num_workers == 1
    with pytest.raises(ConfigError, match="set train.zero_stage=3 or zero_init=false"):
        load_config("tiny", overrides=["train.zero_init=true"])
    with pytest.raises(ConfigError, match="give tune.lrs or tune.lr_range"):
        load_config("tiny", overrides=["tune.lrs=[]"])
    with pytest.raises(ConfigError, match="train.stage1.lr must be set"):
        load_config("tiny", overrides=["train.stage1.lr=null"])
    with pytest.raises(ConfigError, match="exactly one of max_steps and epochs"):
        load_config("tiny", overrides=["train.stage2.epochs=2"])
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        load_config("huge")


def test_overrides_are_typed_and_local_paths_are_pinned(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config("tiny", overrides=["train.stage2.lr=2e-5", "data.held_out=[msrvtt-qa]",
                                         "run.run_dir=runs/x", "data.sources.coco=raw/coco",
                                         "eval.chair_instances=raw/instances_val2014.json"])
    assert cfg.train.stage2.lr == 2e-5 and cfg.data.held_out == ["msrvtt-qa"]
    # Ray workers run elsewhere: relative paths become absolute where the run was started.
    assert cfg.run.run_dir == os.path.join(str(tmp_path), "runs", "x")
    assert cfg.data.sources["coco"] == os.path.join(str(tmp_path), "raw", "coco")
    assert load_config("tiny", overrides=["run.run_dir=s3://bucket/run"]).run.run_dir == "s3://bucket/run"


def test_the_runs_ray_workers_get_the_presets_ray_train_settings(monkeypatch):
    """What ying.cli hands every Ray worker of a run (its runtime_env): the controller's 0.5 s poll,
    and Ray Train's preemption watcher on a cluster (the paper presets) but not on one machine (tiny)."""
    from ying.cli import _worker_env

    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    tiny, paper = _worker_env(load_config("tiny")), _worker_env(load_config("paper"))
    assert tiny["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == paper["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.5"
    assert tiny["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0" and paper["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "1"
    on = _worker_env(load_config("tiny", overrides=["train.preemption_watcher=true"]))
    assert on["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "1"
