"""Stage II learning-rate search on Ray Tune: each trial is a short Ray Train (DeepSpeed) run.

Trials start from the Stage I checkpoint, train ``tune.trial_steps`` steps at one peak learning
rate, and are ranked by ``tune.metric`` (validation answer loss by default) measured on the
validation split of the Stage II tasks, which training never sees.
"""

from __future__ import annotations

import math

from ying import storage
from ying.config import YingConfig
from ying.train.stages import stage_plan, trainer_for

__all__ = ["lr_search"]


def _trial_driver(trial_config: dict) -> None:
    # Runs inside a Tune trial: build and fit one TorchTrainer whose reports become Tune results.
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg = YingConfig.model_validate(trial_config["cfg"])
    steps = cfg.tune.trial_steps
    plan = stage_plan(
        cfg, "stage2", trial_config["data_dir"], out_dir=None,
        init_checkpoint=trial_config["init_checkpoint"],
        lr=trial_config["lr"],
        max_steps=steps,
        warmup_steps=max(1, min(cfg.train.stage2.warmup_steps, steps // 10)),
        log_every=steps,  # one report, at the end, carrying the metric Tune ranks by
    )
    plan.stage = f"tune-lr{trial_config['lr']:g}"
    name = ray.tune.get_context().get_trial_name()
    trainer = trainer_for(cfg, plan, trial_config["storage_path"], name, callbacks=[TuneReportCallback()])
    trainer.fit()


def lr_search(cfg: YingConfig, data_dir: str, init_checkpoint: str, tune_dir: str) -> dict:
    import ray.tune

    space = {
        "lr": ray.tune.grid_search(list(cfg.tune.lrs)),
        "cfg": cfg.to_dict(),
        "data_dir": data_dir,
        "init_checkpoint": init_checkpoint,
        "storage_path": storage.join(tune_dir, "trials"),  # trainer_for resolves it on the trial's node
    }
    tuner = ray.tune.Tuner(
        # The trial driver only waits on its TorchTrainer: it must not hold a CPU the workers need.
        # Tune refuses an all-zero request, so the trial asks for a token 1 MiB of memory instead.
        ray.tune.with_resources(_trial_driver, {"cpu": 0, "memory": 1 << 20}),
        param_space=space,
        tune_config=ray.tune.TuneConfig(metric=cfg.tune.metric, mode=cfg.tune.mode, max_concurrent_trials=1),
        run_config=ray.tune.RunConfig(name="lr_search", **storage.ray_run_storage(tune_dir), verbose=0),
    )
    results = tuner.fit()
    trials = []
    for r in results:
        value = (r.metrics or {}).get(cfg.tune.metric)
        trials.append({
            "lr": r.config["lr"],
            cfg.tune.metric: value,
            "error": repr(r.error) if r.error else None,
        })
    ok = [t for t in trials if t[cfg.tune.metric] is not None and not math.isnan(t[cfg.tune.metric])]
    if not ok:
        raise RuntimeError(f"every learning-rate trial failed: {trials}")
    pick = min if cfg.tune.mode == "min" else max
    best = pick(ok, key=lambda t: t[cfg.tune.metric])
    for t in sorted(trials, key=lambda t: t["lr"]):
        print(f"[tune] lr {t['lr']:.1e}: {cfg.tune.metric}={t[cfg.tune.metric]}", flush=True)
    print(f"[tune] best lr {best['lr']:.1e}", flush=True)
    return {"metric": cfg.tune.metric, "mode": cfg.tune.mode, "trials": sorted(trials, key=lambda t: t["lr"]),
            "best_lr": best["lr"]}
