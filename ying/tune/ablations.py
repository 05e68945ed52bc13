"""The paper's ablations as Ray Tune experiments (Appendix I, Figures 9 and 10; Table 5's Len).

    figure9   instructions per task k: each task's k instructions are drawn at random from its pool,
              seeded by (trial seed, task), as the paper does ("we randomly select 1, 2, 4, and 8
              instructions"): for k <= 8 a random k of the first 8 of the pool (so instructions 9-10
              stay unseen), for k > 8 a random k of the whole pool (10 = all);
              ``ying.train.ingest.instruction_draw``
    figure10  number of training tasks n: a seeded shuffle of the Stage II tasks, the first n
              (0 = the Stage I model itself), the paper's 0/4/8/16/all scaled to the run's tasks.
              Its trials train on k = 8 instructions per task like figure9's k = 8, so its "all"
              point is the same training as figure9's k = 8 trial of that seed: when the figure9
              grid has k = 8 that trial is run once and serves both figures
    answers   the same Stage II run on the rephrased answers and on the raw short ones

Every trial is a Stage II run (Ray Train + DeepSpeed) from the same Stage I checkpoint with the
same steps, batch and instances per task; only the searched value and the seed differ. The seed
is the trial's training seed (``stage_plan(seed=...)``: data order, RNG, the instruction draw) and
figure10's task shuffle; each value is tried with every seed of the grid, so the report can show
the spread across seeds and say "inconclusive" where a difference does not exceed it
(``ying.eval.ablation_report``). Then a trial is evaluated as the paper does, ROUGE-L:
    figure9   with unseen instructions (each Stage II task asked with the pool's instructions
              beyond the 8th, which no k <= 8 trains on) and on the held-out tasks; the score is
              the mean over both sets of tasks (for k = 10 those instructions were seen: its point
              is marked). At k = 8 the same tasks asked with their seen instructions give the
              report's seen-vs-unseen row (Figure 5) over the grid's seeds
    figure10  on the held-out tasks (zero-shot); the score is their mean, each task kept too
    answers   on the rephrased Stage II tasks with their own instructions, and the mean number of
              words per answer
and reports ``score`` to Tune. Trial checkpoints are deleted once evaluated unless
``ablations.keep_checkpoints``. An interrupted experiment is restored: finished trials are kept,
unfinished ones resume from their last Ray Train checkpoint. A finished trial also leaves its
result under ``<ablations>/trial_results/`` (keyed by the experiment's fingerprint and the trial's
spec), so even a trial that Tune's state had not yet marked finished when the run died is answered
from there, never trained again.
"""

from __future__ import annotations

import random
import statistics
from typing import Any

from ying import storage
from ying.config import AblationGrid, YingConfig
from ying.data.tasks import rephrased_tasks
from ying.eval.ablation_report import UNSEEN_FROM  # instructions 9 and 10 are never trained on by a k <= 8 trial

__all__ = ["run_ablations", "trial_specs", "task_counts", "UNSEEN_FROM"]
_PAPER_TASK_COUNTS = (0, 4, 8, 16, 27)  # Appendix I: 0, 4, 8, 16 and all 27 Stage II tasks


def task_counts(grid: AblationGrid, n_tasks: int) -> list[int]:
    """The task counts a run tries, ascending, within ``0..n_tasks`` ("all" = ``n_tasks``)."""
    if grid.task_counts == "paper":
        counts = {round(c * n_tasks / _PAPER_TASK_COUNTS[-1]) for c in _PAPER_TASK_COUNTS}
    else:
        counts = {n_tasks if c == "all" else min(int(c), n_tasks) for c in grid.task_counts}
    return sorted(counts)


def shuffled_tasks(tasks: list[str], seed: int) -> list[str]:
    """Appendix I: "randomly shuffling our tasks and then selecting a subset" (seeded)."""
    order = sorted(tasks)
    random.Random(f"figure10/{seed}").shuffle(order)
    return order


def trial_specs(cfg: YingConfig, grid: AblationGrid, stage2_tasks: list[str]) -> dict[str, list[dict]]:
    """{experiment: [trial spec]}: what each trial trains on and how its records look, for every
    value and seed of ``grid``. A figure10 spec with ``same_as`` is not trained: its point is the
    figure9 trial named there (the same tasks, instructions and seed), evaluated on the held-out tasks."""
    specs: dict[str, list[dict]] = {"figure9": [], "figure10": [], "answers": []}
    for seed in grid.seeds:
        for k in grid.instructions_per_task:
            specs["figure9"].append({"experiment": "figure9", "value": k, "seed": seed, "tasks": stage2_tasks,
                                     "policy": {"instructions_per_task": k}})
        order = shuffled_tasks(stage2_tasks, seed)
        for n in task_counts(grid, len(stage2_tasks)):
            spec = {"experiment": "figure10", "value": "all" if n == len(order) else n, "seed": seed,
                    "tasks": order[:n], "policy": {"instructions_per_task": UNSEEN_FROM}}
            if n == len(order) and n and UNSEEN_FROM in grid.instructions_per_task:
                spec["same_as"] = {"experiment": "figure9", "value": UNSEEN_FROM, "seed": seed}
            specs["figure10"].append(spec)
        if grid.answers:
            for answers, label in (("outputs", "rephrased"), ("original", "raw")):
                specs["answers"].append({"experiment": "answers", "value": label, "seed": seed,
                                         "tasks": stage2_tasks, "policy": {"answers": answers}})
    return {k: v for k, v in specs.items() if v}


def _words(text: str) -> int:
    # Chinese has no spaces: count its characters as words.
    return sum(len(w) if any("\u4e00" <= ch <= "\u9fff" for ch in w) else 1 for w in text.split())


def evaluate_trial(cfg: YingConfig, data_dir: str, checkpoint: str, spec: dict, stage2_tasks: list[str],
                   name: str, cache_dir: str) -> dict:
    """The trial's score as the paper measures its experiment (module docstring)."""
    from ying.data.instructions import load_pool
    from ying.eval.evaluate import plan_evaluation, predict_plan, score_plan
    from ying.eval.predictors import ModelSpec
    from ying.tune.runner import trains_in_trial

    a = cfg.ablations
    held_out = [t for t in cfg.data.held_out if t in cfg.data.tasks]
    rephrased = [t for t in stage2_tasks if t in set(rephrased_tasks(cfg.rephrase.tasks))]
    if spec["experiment"] == "figure9":
        suites, tasks = ["unseen_instructions"], held_out
    elif spec["experiment"] == "figure10":
        suites, tasks = [], held_out
    else:
        suites, tasks = [], rephrased or stage2_tasks
    plan = plan_evaluation(cfg, data_dir, suites=suites, tasks=tasks, limit=a.eval_max_per_task,
                           train_instructions={t: load_pool(t)[:UNSEEN_FROM] for t in stage2_tasks})
    # A trial that trained in its own process answers there too, on the resources it holds: an actor
    # would start and load the model for each trial. Otherwise the eval stage's actors: on a GPU in
    # the checkpoint's dtype with eval.use_gpu (the trial's Ray Train workers have given their GPUs back).
    here = trains_in_trial(cfg) and (cfg.train.use_gpu or not cfg.eval.use_gpu)  # a GPU eval needs the trial's GPU
    answers, _ = predict_plan(cfg, ModelSpec(name, "ying", checkpoint), plan.suite_examples(), cache_dir,
                              in_process=here)
    scores = score_plan(plan, answers)
    per_task = {t: 100 * s["rouge_l"] for t, s in scores["tasks"].items() if s.get("n")}
    n = sum(s.get("n", 0) for s in scores["tasks"].values())
    seen_unseen: dict[str, dict[str, float]] = {}
    if spec["experiment"] == "figure9":
        unseen = scores["suites"]["unseen_instructions"]
        for key, value in unseen["scores"].items():
            task, _, kind = key.rpartition("/")
            if kind == "unseen" and value is not None:  # fractions; "<task>/seen" is not in the score
                per_task[key] = 100 * value
                n += unseen["n"].get(key, 0)
            if kind in ("seen", "unseen") and value is not None:
                seen_unseen.setdefault(task, {})[kind] = 100 * value
    out = {"score": statistics.fmean(per_task.values()) if per_task else None, "per_task": per_task, "n": n,
           "n_held_out": sum(scores["tasks"].get(t, {}).get("n", 0) for t in held_out)}
    if spec["experiment"] == "figure9" and spec["value"] == UNSEEN_FROM:
        # k = 8 trains on exactly instructions 1-8, the suite's "seen" ones: Figure 5's comparison.
        out["seen_unseen"] = {t: v for t, v in seen_unseen.items() if set(v) == {"seen", "unseen"}}
    if spec["experiment"] == "answers":
        texts = list(answers.get("tasks", {}).values())
        out["answer_words"] = statistics.fmean(_words(t) for t in texts) if texts else None
    return out


def _result_path(trial: dict) -> str:
    spec = trial["spec"]
    key = storage.fingerprint({"grid": trial["grid_fingerprint"], "spec": spec})
    return storage.join(trial["ablations_dir"], "trial_results", f"{spec['experiment']}-{spec['value']}-"
                        f"seed{spec['seed']}-{key}.json")


def _trial(trial: dict) -> None:
    """One ablation trial: train (unless it trains on no task), evaluate, report, clean up."""
    import ray.tune

    from ying.console import quiet_stage_process
    from ying.train.stages import fit, stage_plan
    from ying.tune.runner import trains_in_trial, trial_timing

    quiet_stage_process()  # a trial is its own process; its Ray Data runs here and in Train's coordinator

    cfg: YingConfig = trial["cfg"]  # the trial's config, built with model_copy by run_ablations
    spec = trial["spec"]
    label = f"[ablations] {spec['experiment']} {spec['value']} (seed {spec['seed']})"
    done_path = _result_path(trial)
    if storage.exists(done_path):  # finished before an interruption: its result, not a second training
        print(f"{label}: finished in an earlier run, result reused", flush=True)
        ray.tune.report(storage.read_json(done_path))
        return
    print(f"{label}: trial started", flush=True)
    a = cfg.ablations
    name = ray.tune.get_context().get_trial_name()
    trial_dir = storage.join(trial["ablations_dir"], "trials", name)
    checkpoint = trial["stage1_checkpoint"]
    if spec["tasks"]:
        steps = a.trial_steps
        plan = stage_plan(cfg, "stage2", trial["data_dir"], out_dir=storage.join(trial_dir, "hf"),
                          init_checkpoint=trial["stage1_checkpoint"], tasks=spec["tasks"], lr=trial["lr"],
                          seed=spec["seed"],  # the trial's training seed: data order, RNG, instruction draw
                          max_steps=steps, warmup_steps=max(1, min(cfg.train.stage2.warmup_steps, steps // 10)),
                          batch_size=a.batch_size or cfg.train.stage2.batch_size,  # stage_plan picks its micro-batch
                          log_every=max(1, steps // 5), checkpoint_every=max(1, steps // 3), val_examples=0,
                          policy={**spec["policy"], "max_per_task": a.max_per_task},
                          context=f"ablation:{trial['fingerprint']}:{spec['experiment']}:{spec['value']}:{spec['seed']}")
        plan.stage = f"{spec['experiment']}-{spec['value']}-seed{spec['seed']}"
        summary = fit(cfg, plan, storage.join(trial_dir, "train"), name=name, tune_reports=True,
                      in_process=trains_in_trial(cfg))
        print(f"{label}: trained, {trial_timing(summary)}", flush=True)
        checkpoint = plan.out_dir
    result = evaluate_trial(cfg, trial["data_dir"], checkpoint, spec, trial["stage2_tasks"], name,
                            storage.join(trial["ablations_dir"], "eval_cache"))
    result = {**result, "experiment": spec["experiment"], "value": spec["value"], "seed": spec["seed"], "done": True}
    storage.write_json_atomic(done_path, result)
    if spec["tasks"] and not a.keep_checkpoints:
        fs, path = storage.filesystem(trial_dir)
        if fs.exists(path):
            fs.rm(path, recursive=True)
    print(f"{label}: trial done, ROUGE-L {result['score']:.1f}", flush=True)
    ray.tune.report(result)


def _shared_outcome(spec: dict, results: dict, held_out: list[str]) -> dict:
    """A figure10 point from the figure9 trial that trained the same (``spec["same_as"]``),
    scored as figure10 scores: the mean over the held-out tasks."""
    want = spec["same_as"]
    source = next((p for p in results.get(want["experiment"], {}).get("points", [])
                   if p["value"] == want["value"] and p["seed"] == want["seed"]), None)
    if source is None or source.get("score") is None:
        error = f"its {want['experiment']} trial k={want['value']} (seed {want['seed']}) has no result"
        return {"config": {"spec": spec}, "metrics": {}, "error": error}
    per_task = {t: v for t, v in source.get("per_task", {}).items() if t in held_out}
    metrics = {"score": statistics.fmean(per_task.values()) if per_task else None, "per_task": per_task,
               "n": source.get("n_held_out", source["n"]), "done": per_task != {}}
    return {"config": {"spec": spec}, "metrics": metrics,
            "error": None if per_task else "its figure9 trial scored no held-out task"}


def run_ablations(cfg: YingConfig, data_dir: str, stage1_checkpoint: str, lr: float, out_dir: str,
                  fingerprint: str = "", grid: AblationGrid | None = None, fresh: bool = False) -> dict:
    """Run every experiment of ``grid`` (default ``ablations.grid``); write ``results.json`` and the
    plots under ``out_dir``; return the results."""
    import ray.tune

    from ying.data.records import task_counts
    from ying.eval.ablation_report import plot_figure
    from ying.train.stages import stage_tasks
    from ying.tune.runner import last_results, run_experiment

    a = cfg.ablations
    grid = grid or a.grid
    stage2_tasks = stage_tasks(cfg, "stage2", task_counts(data_dir, "train"))
    trial_cfg = cfg
    if a.num_workers:
        trial_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"num_workers": a.num_workers})})
    base = {"cfg": trial_cfg, "data_dir": data_dir, "stage1_checkpoint": stage1_checkpoint,
            "lr": a.lr or lr, "ablations_dir": out_dir, "fingerprint": fingerprint, "stage2_tasks": stage2_tasks}
    if fresh:  # --force: start over, finished trials too
        fs, done = storage.filesystem(storage.join(out_dir, "trial_results"))
        if fs.exists(done):
            fs.rm(done, recursive=True)
    results: dict[str, Any] = {}
    metrics = {
        "figure9": "ROUGE-L with unseen instructions (instructions 9-10 of each pool) and on held-out tasks, mean",
        "figure10": "ROUGE-L on held-out tasks (zero-shot), mean",
        "answers": "ROUGE-L on the rephrased Stage II tasks; answer_words: mean words per answer",
    }
    held_out = [t for t in cfg.data.held_out if t in cfg.data.tasks]
    for experiment, all_specs in trial_specs(cfg, grid, stage2_tasks).items():
        specs = [s for s in all_specs if "same_as" not in s]
        shared = [s for s in all_specs if "same_as" in s]
        print(f"[ablations] {experiment}: {len(specs)} trial(s), values "
              f"{sorted({s['value'] for s in specs}, key=str)}, seeds {sorted({s['seed'] for s in all_specs})}"
              + (f"; {len(shared)} point(s) from the same figure9 training" if shared else ""), flush=True)
        outcomes = []
        if specs:
            grid_fp = storage.fingerprint({"fingerprint": fingerprint, "specs": specs, "lr": base["lr"]})
            space = {**base, "grid_fingerprint": grid_fp, "spec": ray.tune.grid_search(specs)}
            tune_config = ray.tune.TuneConfig(max_concurrent_trials=a.max_concurrent_trials)
            outcomes = last_results(run_experiment(experiment, grid_fp, _trial, space, tune_config,
                                                   storage.join(out_dir, "experiments"), trial_cfg, fresh=fresh))
        for spec in shared:
            outcomes.append(_shared_outcome(spec, results, held_out))
        points = []
        for r in outcomes:
            spec, m = r["config"]["spec"], r["metrics"]
            if r["error"] or not m.get("done"):
                print(f"[ablations] {experiment} {spec['value']} seed {spec['seed']} failed: {r['error']}", flush=True)
                points.append({"value": spec["value"], "seed": spec["seed"], "score": None, "n": 0,
                               "error": r["error"]})
                continue
            point = {"value": spec["value"], "seed": spec["seed"], "score": m["score"], "n": m["n"],
                     "per_task": m.get("per_task", {}), "tasks": spec["tasks"]}
            if experiment == "figure9" and spec["value"] > UNSEEN_FROM:
                point["note"] = f"k={spec['value']} also trains on the instructions beyond the {UNSEEN_FROM}th"
            if "answer_words" in m:
                point["answer_words"] = m["answer_words"]
            if experiment == "figure9":
                point["n_held_out"] = m.get("n_held_out", 0)
            if m.get("seen_unseen"):
                point["seen_unseen"] = m["seen_unseen"]
            if "same_as" in spec:
                point["same_as"] = spec["same_as"]
                point["note"] = (f"'all' is the figure9 k={UNSEEN_FROM} training of the same seed "
                                 "(every figure10 trial trains on 8 instructions per task)")
            points.append(point)
        points.sort(key=lambda p: (str(type(p["value"])), p["value"], p["seed"]))
        results[experiment] = {"metric": metrics[experiment], "metric_short": "ROUGE-L", "points": points}
        for p in points:
            if p["score"] is not None:
                extra = f", {p['answer_words']:.1f} words" if "answer_words" in p else ""
                print(f"[ablations] {experiment} {p['value']} (seed {p['seed']}): ROUGE-L {p['score']:.1f} "
                      f"over {p['n']} examples{extra}", flush=True)
    plots = {"figure9": ("Figure 9: ROUGE-L vs instructions per task", "instructions per task", False),
             "figure10": ("Figure 10: ROUGE-L vs training tasks", "training tasks", True)}
    for experiment, (title, xlabel, per_task) in plots.items():
        entry = results.get(experiment)
        if entry and any(p["score"] is not None for p in entry["points"]):
            path = storage.join(out_dir, f"{experiment}.png")
            plot_figure(entry, path, title, xlabel, per_task=per_task)
            entry["plot"] = f"ablations/{experiment}.png"
    results["settings"] = {"trial_steps": a.trial_steps, "batch_size": a.batch_size or cfg.train.stage2.batch_size,
                           "max_per_task": a.max_per_task, "lr": base["lr"], "eval_max_per_task": a.eval_max_per_task,
                           "seeds": grid.seeds, "stage2_tasks": stage2_tasks, "held_out": held_out}
    storage.write_json_atomic(storage.join(out_dir, "results.json"), results)
    failed = [p for e in ("figure9", "figure10", "answers") for p in results.get(e, {}).get("points", [])
              if p["score"] is None]
    if failed and len(failed) == sum(len(results.get(e, {}).get("points", [])) for e in ("figure9", "figure10", "answers")):
        raise RuntimeError(f"every ablation trial failed; see {storage.join(out_dir, 'experiments')}")
    return results
