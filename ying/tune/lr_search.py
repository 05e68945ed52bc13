"""Stage II learning-rate search on Ray Tune, before Stage II: its best learning rate feeds Stage II.

Each trial is a short Ray Train (DeepSpeed) run of the Stage II plan from the Stage I checkpoint
at one peak learning rate. Trials report the validation answer loss (a seeded sample spread over
the Stage II tasks, never trained on) every ``tune.report_every`` steps, and ASHA stops the weak
ones early. The search space (a grid of ``tune.lrs``, or ``tune.num_samples`` draws log-uniform
in ``tune.lr_range``), the trial length and the trials' concurrency come from the config. An
explicit ``train.stage2.lr`` skips the search.
"""

from __future__ import annotations

import math

from ying import storage
from ying.config import YingConfig

__all__ = ["lr_search", "search_space"]


def _trial(trial: dict) -> None:
    """One Tune trial: a Ray Train run whose reports become Tune results."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from ying.console import quiet_stage_process
    from ying.train.stages import fit, stage_plan

    quiet_stage_process()  # a trial is its own process; its Ray Data runs here and in Train's coordinator

    cfg: YingConfig = trial["cfg"]
    t = cfg.tune
    plan = stage_plan(cfg, "stage2", trial["data_dir"], out_dir=None, init_checkpoint=trial["init_checkpoint"],
                      lr=trial["lr"], max_steps=t.trial_steps,
                      warmup_steps=max(1, min(cfg.train.stage2.warmup_steps, t.trial_steps // 10)),
                      log_every=t.report_every, eval_every=t.report_every, val_examples=t.val_examples,
                      checkpoint_every=t.report_every, context=f"lr-search:{trial['fingerprint']}")
    plan.stage = f"lr-{trial['lr']:.2e}"
    # The trial's name is stable across a restore, so its Ray Train run (and checkpoint) is found again.
    fit(cfg, plan, trial["storage_path"], name=ray.tune.get_context().get_trial_name(),
        callbacks=[TuneReportCallback()])


def search_space(cfg: YingConfig):
    import ray.tune

    if cfg.tune.lr_range:
        low, high = cfg.tune.lr_range
        return ray.tune.loguniform(low, high)
    return ray.tune.grid_search(list(cfg.tune.lrs))


def lr_search(cfg: YingConfig, data_dir: str, init_checkpoint: str, tune_dir: str, fingerprint: str = "",
              fresh: bool = False) -> dict:
    """Run (or skip) the search; returns {"best_lr", "lr_source", "trials", ...} for the tune manifest."""
    if cfg.train.stage2.lr is not None:
        print(f"[tune] train.stage2.lr={cfg.train.stage2.lr:g} is set: no learning-rate search", flush=True)
        return {"best_lr": cfg.train.stage2.lr, "lr_source": "config", "trials": [], "metric": cfg.tune.metric}
    import ray.tune
    from ray.tune.schedulers import ASHAScheduler

    from ying.tune.runner import last_results, run_experiment

    t = cfg.tune
    trial_cfg = cfg
    if t.num_workers:  # the trials' own worker count: a typed copy of the config, not a patched dict
        trial_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"num_workers": t.num_workers})})
    reports = max(1, t.trial_steps // t.report_every)
    space = {
        "lr": search_space(cfg),
        "cfg": trial_cfg,
        "data_dir": data_dir,
        "init_checkpoint": init_checkpoint,
        "storage_path": storage.join(tune_dir, "train_runs"),
        "fingerprint": fingerprint,
    }
    tune_config = ray.tune.TuneConfig(
        metric=t.metric, mode=t.mode, num_samples=t.num_samples, max_concurrent_trials=t.max_concurrent_trials,
        scheduler=ASHAScheduler(time_attr="training_iteration", max_t=reports,
                                grace_period=min(t.grace_period, reports), reduction_factor=t.reduction_factor),
    )
    results = run_experiment("lr_search", fingerprint or storage.fingerprint(trial_cfg.to_dict()), _trial, space,
                             tune_config, storage.join(tune_dir, "experiments"), fresh=fresh)
    trials = []
    for r in last_results(results):
        value = r["metrics"].get(t.metric)
        trials.append({"lr": r["config"]["lr"], t.metric: value, "step": r["metrics"].get("step"),
                       "reports": r["metrics"].get("training_iteration"),
                       "stopped_early": (r["metrics"].get("step") or 0) < t.trial_steps and r["error"] is None,
                       "error": r["error"]})
    ok = [x for x in trials if isinstance(x[t.metric], (int, float)) and math.isfinite(x[t.metric])]
    if not ok:
        raise RuntimeError(f"every learning-rate trial failed: {trials}")
    best = (min if t.mode == "min" else max)(ok, key=lambda x: x[t.metric])
    for x in sorted(trials, key=lambda x: x["lr"]):
        state = "stopped early by ASHA" if x["stopped_early"] else ("failed: " + x["error"] if x["error"] else "ran")
        print(f"[tune] lr {x['lr']:.2e}: {t.metric}={x[t.metric]} at step {x['step']} ({state})", flush=True)
    print(f"[tune] best lr {best['lr']:.2e}", flush=True)
    return {"metric": t.metric, "mode": t.mode, "trials": sorted(trials, key=lambda x: x["lr"]),
            "best_lr": best["lr"], "lr_source": "tune"}
