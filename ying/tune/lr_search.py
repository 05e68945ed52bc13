"""Stage II learning-rate search on Ray Tune, before Stage II: its best learning rate feeds Stage II.

Each trial is a short Ray Train (DeepSpeed) run of the Stage II plan from the Stage I checkpoint
at one peak learning rate (a 1-worker trial trains in the trial's own, reused process:
``ying.tune.runner``). Trials report the validation answer loss (a seeded sample spread over
the Stage II tasks, never trained on) every ``tune.report_every`` steps, and ASHA stops the weak
ones early. The search space (a grid of ``tune.lrs``, or ``tune.num_samples`` draws log-uniform
in ``tune.lr_range``), the trial length and the trials' concurrency come from the config. An
explicit ``train.stage2.lr`` skips the search.

ASHA decides at rungs: a trial that reaches a rung is stopped when its metric is worse than the
``1 - 1/reduction_factor`` quantile of the results recorded there so far. The first trial at a rung
has nothing to be compared with and always goes on, so the order of the trials matters. A grid
runs middle first, then outwards with the larger lr before the smaller (``middle_out``): the edges
are judged against the centre, and the smallest lr, the likeliest loser of a short trial (short
trials favour larger learning rates), comes last and meets every result before it. With
``max_concurrent_trials: 1`` a 3-value grid then always loses a trial to ASHA unless its middle value
is the worst of the three at every rung. With 2 concurrent trials the first two race to each rung
(either may arrive first) and the third is compared with both: the smallest lr is stopped whenever
it is below the others' median. In ascending order, as before, the two smallest lrs raced and the
largest came last: where loss falls with lr (the tiny preset) nothing was ever stopped.

After the search, a best learning rate on the edge of the searched values (the smallest or largest
grid value; for ``tune.lr_range``, within the outer ``EDGE_MARGIN`` of the range in log space) means
the optimum may lie outside: the search prints one warning line with the next grid or range to try
as a ``--set`` override, and returns it (``edge``, ``suggested_lrs`` / ``suggested_lr_range``,
``edge_warning``) for the tune manifest and the run report.
"""

from __future__ import annotations

import math

import numpy as np

from ying import storage
from ying.config import YingConfig

__all__ = ["lr_search", "search_space", "middle_out", "trial_reports", "asha_rungs", "grid_edge", "range_edge",
           "edge_note", "EDGE_MARGIN"]

# For tune.lr_range: a best lr within the lowest or highest 10% of the range's log width is "on the
# edge". Draws are log-uniform, so 10% of the draws land there by chance alone; a best one there
# still says the curve was falling towards that end.
EDGE_MARGIN = 0.1


def _trial(trial: dict) -> None:
    """One Tune trial: a Ray Train run whose reports become Tune results."""
    import ray.tune

    from ying.console import quiet_stage_process
    from ying.train.stages import fit, stage_plan
    from ying.tune.runner import trains_in_trial, trial_timing

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
    summary = fit(cfg, plan, trial["storage_path"], name=ray.tune.get_context().get_trial_name(), tune_reports=True,
                  in_process=trains_in_trial(cfg))
    print(f"[tune] lr {trial['lr']:.2e}: {trial_timing(summary)}", flush=True)  # a trial ASHA stopped ends above


def middle_out(lrs) -> list[float]:
    """The grid's distinct values in trial order: the middle first, then outwards, the larger lr
    before the smaller at equal distance, so the smallest comes last (see the module's notes).

    The first trial at an ASHA rung is never stopped, so it should be the grid's centre (a preset's
    best guess), against which the edges are judged; in ascending order the smallest lr came first,
    and where loss falls with lr (the tiny preset) every later trial beat the ones before it."""
    grid = sorted(set(lrs))
    centre = (len(grid) - 1) / 2
    return [grid[i] for i in sorted(range(len(grid)), key=lambda i: (abs(i - centre), -i))]


def search_space(cfg: YingConfig):
    import ray.tune

    if cfg.tune.lr_range:
        low, high = cfg.tune.lr_range
        return ray.tune.loguniform(low, high)
    return ray.tune.grid_search(middle_out(cfg.tune.lrs))


def trial_reports(trial_steps: int, report_every: int) -> int:
    """Results per trial (ASHA's ``max_t``): one every ``report_every`` steps before the last step, and
    the last step's (``ying.train.loop``). With trial_steps not a multiple of report_every, floor()
    made max_t one short, and ASHA ended every trial at its second-last report."""
    return max(1, math.ceil(trial_steps / report_every))


def asha_rungs(reports: int, grace_period: int, reduction_factor: float) -> list[int]:
    """The reports (``training_iteration``) at which ASHA may stop a trial, for ``max_t = reports``.

    Ray's ``_Bracket`` (ray/tune/schedulers/async_hyperband.py, one bracket) puts its rungs at
    ``grace * rf**k`` for ``k < int(log(max_t / grace) / log(rf) + 1)``; a result at ``max_t``
    stops the trial before any rung is consulted, so only rungs below ``max_t`` decide anything."""
    grace = min(grace_period, reports)
    count = int(np.log(reports / grace) / np.log(reduction_factor) + 1)
    return sorted(m for m in (grace * reduction_factor ** k for k in range(count)) if m < reports)


def _lr(x: float) -> float:
    return float(f"{x:.2g}")  # two significant digits: a value a person would type


def _fmt(x: float) -> str:
    mantissa, exponent = f"{x:.1e}".split("e")
    return f"{mantissa.removesuffix('.0')}e{int(exponent)}"


def grid_edge(lrs, best: float) -> tuple[str | None, list[float] | None]:
    """("upper" | "lower", the next grid) when ``best`` is the largest or smallest of the grid ``lrs``,
    else (None, None). The next grid keeps the best and its inner neighbour (so the next search can
    bracket the optimum, not run into the same edge again) and goes ``len(grid) - 1`` of the grid's
    mean log steps beyond the edge: {2e-4, 5e-4, 1e-3} with 1e-3 best gives [5e-4, 1e-3, 2.2e-3, 5e-3]."""
    grid = sorted(set(lrs))
    if len(grid) < 2:
        return None, None  # one value: nothing was compared
    step = (grid[-1] / grid[0]) ** (1 / (len(grid) - 1))
    beyond = range(1, len(grid))
    if math.isclose(best, grid[-1], rel_tol=1e-9):
        return "upper", [grid[-2], grid[-1], *(_lr(grid[-1] * step**k) for k in beyond)]
    if math.isclose(best, grid[0], rel_tol=1e-9):
        return "lower", [*(_lr(grid[0] / step**k) for k in reversed(beyond)), grid[0], grid[1]]
    return None, None


def range_edge(low: float, high: float, best: float,
               margin: float = EDGE_MARGIN) -> tuple[str | None, list[float] | None]:
    """("upper" | "lower", the next [low, high]) when ``best`` lies within the outer ``margin`` of
    [low, high] in log space, else (None, None). The next range has the same log width, centred on
    the best: [1e-5, 1e-3] with 9e-4 best gives [9e-5, 9e-3]."""
    position = math.log(best / low) / math.log(high / low)
    if margin <= position <= 1 - margin:
        return None, None
    half = math.sqrt(high / low)
    return ("lower" if position < margin else "upper"), [_lr(best / half), _lr(best * half)]


def edge_note(lrs, lr_range, best: float) -> dict:
    """The edge verdict for the tune manifest: ``edge`` (None when the best is inside), the next grid
    (``suggested_lrs``) or range (``suggested_lr_range``), and ``edge_warning``, the line to print."""
    if lr_range:
        low, high = lr_range
        edge, suggestion = range_edge(low, high, best)
        if edge is None:
            return {"edge": None, "suggested_lr_range": None, "edge_warning": None}
        where = f"the {'lowest' if edge == 'lower' else 'highest'} {EDGE_MARGIN:.0%} (log scale)"
        warning = (f"[tune] WARNING: best lr {_fmt(best)} lies in {where} of tune.lr_range [{_fmt(low)}, "
                   f"{_fmt(high)}]: the optimum may be {'below' if edge == 'lower' else 'above'} it. Next search "
                   f"around it: --set 'tune.lr_range=[{', '.join(_fmt(x) for x in suggestion)}]'")
        return {"edge": edge, "suggested_lr_range": suggestion, "edge_warning": warning}
    edge, suggestion = grid_edge(lrs, best)
    if edge is None:
        return {"edge": None, "suggested_lrs": None, "edge_warning": None}
    grid = ", ".join(_fmt(x) for x in sorted(set(lrs)))
    warning = (f"[tune] WARNING: best lr {_fmt(best)} is the {'smallest' if edge == 'lower' else 'largest'} of the "
               f"grid [{grid}]: the optimum may be {'below' if edge == 'lower' else 'above'} it. Next search: "
               f"--set 'tune.lrs=[{', '.join(_fmt(x) for x in suggestion)}]'")
    return {"edge": edge, "suggested_lrs": suggestion, "edge_warning": warning}


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
    reports = trial_reports(t.trial_steps, t.report_every)
    rungs = asha_rungs(reports, t.grace_period, t.reduction_factor)
    if rungs:
        print(f"[tune] ASHA may stop a trial at step {', '.join(str(r * t.report_every) for r in rungs)} "
              f"of {t.trial_steps} (report {', '.join(map(str, rungs))} of {reports})", flush=True)
    else:
        print(f"[tune] WARNING: ASHA can stop no trial: {reports} reports with grace_period {t.grace_period} and "
              f"reduction_factor {t.reduction_factor} leave no rung before the last report", flush=True)
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
                             tune_config, storage.join(tune_dir, "experiments"), trial_cfg, fresh=fresh)
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
    print(f"[tune] best lr {best['lr']:.2e} ({sum(x['stopped_early'] for x in trials)} of {len(trials)} trials "
          f"stopped early by ASHA)", flush=True)
    # One finished trial compares nothing: no verdict on where the optimum lies.
    note = edge_note(t.lrs, t.lr_range, best["lr"]) if len(ok) > 1 else {"edge": None, "edge_warning": None}
    if note["edge_warning"]:
        print(note["edge_warning"], flush=True)
    return {"metric": t.metric, "mode": t.mode, "trials": sorted(trials, key=lambda x: x["lr"]),
            "best_lr": best["lr"], "lr_source": "tune", "asha_rungs": rungs, **note}
