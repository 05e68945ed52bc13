"""Ying's stage table: the paper's pipeline, stage by stage, in dependency order.

    sources -> unify -> rephrase -> qc -> stage1 -> stage2 -> tune -> eval -> serve

Each stage is a plain function of a ``StageContext`` that calls one module's entry point and
returns what later stages and the report need (paths, counts, metrics). ``ying.workflow`` runs
them as Ray tasks and skips those already done.
"""

from __future__ import annotations

import os

from ying import storage
from ying.config import YingConfig
from ying.workflow import Stage, StageContext, run_on_cpus

__all__ = ["STAGES", "stage_names", "missing_sources"]


def missing_sources(cfg: YingConfig) -> list[str]:
    """Before Ray starts: tasks with no source data, and local source dirs that are not there."""
    problems = []
    missing = [t for t in cfg.data.tasks if t not in cfg.data.sources]
    if missing and not cfg.miniworld.enabled:
        shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
        problems.append(
            f"no source data for {len(missing)} of the {len(cfg.data.tasks)} tasks in data.tasks ({shown}). "
            f"Give each task the directory of its release: --set data.sources.{missing[0]}=/data/{missing[0]} "
            "(local or s3://, one --set per task, or a data.sources mapping in a --config YAML); "
            "or drop those tasks from data.tasks; or --set miniworld.enabled=true to generate synthetic ones")
    for task, path in sorted(cfg.data.sources.items()):
        if task in cfg.data.tasks and storage.is_local(path) and not os.path.isdir(path):
            problems.append(f"data.sources.{task}={path}: no such directory")
    return problems


def run_sources(ctx: StageContext) -> dict:
    """Real releases where the config names them; the mini-world generates the rest."""
    from ying.data.miniworld import generate_miniworld

    cfg = ctx.cfg
    problems = missing_sources(cfg)
    if problems:
        raise ValueError("; ".join(problems))
    sources = {t: p for t, p in cfg.data.sources.items() if t in cfg.data.tasks}
    missing = [t for t in cfg.data.tasks if t not in sources]
    if missing:  # drawing scenes and encoding images and videos: CPU work, scheduled as such
        sources.update(run_on_cpus(generate_miniworld, ctx.stage_dir, cfg.miniworld, cfg.run.seed, missing))
    return {"sources": sources, "miniworld_tasks": missing}


def run_unify(ctx: StageContext) -> dict:
    from ying import telemetry
    from ying.data.build import build_unified, read_rejects

    stats = build_unified(ctx.cfg, ctx.output_of("sources", "sources"), ctx.stage_dir)
    for task, splits in stats.items():
        telemetry.records_counter().inc(sum(c["written"] for c in splits.values()), tags={"task": task})
    for reject in read_rejects(ctx.stage_dir):
        # The reason's head ("missing image file", "box ...") keeps the tag's cardinality small.
        kind = reject["reason"].split(":")[0][:48]
        telemetry.records_rejected_counter().inc(1, tags={"task": reject["task"], "reason": kind})
    return {"data_dir": ctx.stage_dir, "stats": stats}


def run_rephrase(ctx: StageContext) -> dict:
    from ying.data.rephrase import rephrase_records

    counts = rephrase_records(ctx.cfg.rephrase, ctx.output_of("unify", "data_dir"), ctx.stage_dir)
    return {"data_dir": ctx.stage_dir, "counts": counts}


def run_qc(ctx: StageContext) -> dict:
    from ying.data.qc import check_records
    from ying.data.review import write_review_page
    from ying.data.stats import write_stats

    # Also the held-out policy and the contamination guard: eval-only tasks and evaluation images never reach training.
    counts = check_records(ctx.output_of("rephrase", "data_dir"), ctx.stage_dir, ctx.cfg.data.max_image_pixels,
                           eval_only=ctx.cfg.data.eval_only)
    _count_qc_rejects(counts)
    # The paper's Stage III: statistics (Tables 2, 3, 9) and the review page, of the data training reads.
    # (The seed is already in this stage's fingerprint through unify's.)
    # CPU work (tokenizing every instruction, decoding and resizing images): Ray tasks with a CPU each.
    stats = run_on_cpus(write_stats, ctx.stage_dir, ctx.stage_dir)
    review = run_on_cpus(write_review_page, ctx.stage_dir, storage.join(ctx.stage_dir, "review.html"),
                         seed=ctx.cfg.run.seed)
    return {"data_dir": ctx.stage_dir, "counts": counts, "stats_json": stats["stats_json"],
            "stats_md": stats["stats_md"], "review_html": review["path"]}


def _count_qc_rejects(counts: dict) -> None:
    """QC's set-asides as ``ying_records_rejected`` (reason ``qc:<kind>``), beside unify's rejects."""
    from ying import telemetry

    for task, splits in counts.get("tasks", {}).items():
        for kind in ("invalid", "eval_only", "contamination"):
            n = sum(c.get(kind, 0) for c in splits.values())
            if n:
                telemetry.records_rejected_counter().inc(n, tags={"task": task, "reason": f"qc:{kind}"})


def run_stage1(ctx: StageContext) -> dict:
    from ying.train.stages import run_stage

    return run_stage(ctx.cfg, "stage1", ctx.output_of("qc", "data_dir"), ctx.stage_dir)


def run_stage2(ctx: StageContext) -> dict:
    from ying.train.stages import run_stage

    return run_stage(ctx.cfg, "stage2", ctx.output_of("qc", "data_dir"), ctx.stage_dir,
                     init_checkpoint=ctx.output_of("stage1", "checkpoint"))


def run_tune(ctx: StageContext) -> dict:
    from ying.tune.lr_search import lr_search

    return lr_search(ctx.cfg, ctx.output_of("qc", "data_dir"), ctx.output_of("stage1", "checkpoint"), ctx.stage_dir)


def run_eval(ctx: StageContext) -> dict:
    from ying.eval.evaluate import evaluate_models
    from ying.eval.run_report import write_run_report

    checkpoints = {"stage1": ctx.output_of("stage1", "checkpoint"), "stage2": ctx.output_of("stage2", "checkpoint")}
    result = evaluate_models(ctx.cfg, ctx.output_of("qc", "data_dir"), checkpoints, ctx.stage_dir,
                             sources=ctx.output_of("sources", "sources"))
    report_path = run_on_cpus(write_run_report, ctx.cfg, ctx.inputs, result["metrics"], ctx.stage_dir)  # plots: CPU work
    return {**result, "report": report_path}


def run_serve(ctx: StageContext) -> dict:
    from ying.serve.check import serve_and_check

    return serve_and_check(ctx.cfg, ctx.output_of("stage2", "checkpoint"), ctx.output_of("qc", "data_dir"))


_TRAIN_COMMON = ["run.seed", "model", "train.num_workers", "train.use_gpu", "train.zero_stage",
                 "train.weight_decay", "train.grad_clip", "train.shuffle_buffer"]

STAGES: list[Stage] = [
    Stage("sources", run_sources, [], ["run.seed", "miniworld", "data.tasks", "data.sources"], check=missing_sources),
    Stage("unify", run_unify, ["sources"], ["run.seed", "data"]),
    Stage("rephrase", run_rephrase, ["unify"], ["rephrase"]),
    Stage("qc", run_qc, ["rephrase"], ["data.max_image_pixels", "data.eval_only"]),
    Stage("stage1", run_stage1, ["qc"], _TRAIN_COMMON + ["train.stage1"]),
    Stage("stage2", run_stage2, ["qc", "stage1"], _TRAIN_COMMON + ["train.stage2", "data.held_out", "data.eval_only"]),
    # Tune waits for Stage II: both want every CPU of a small machine, and the DAG is a chain.
    Stage("tune", run_tune, ["qc", "stage1", "stage2"], _TRAIN_COMMON + ["train.stage2", "data.held_out", "data.eval_only", "tune"]),
    Stage("eval", run_eval, ["qc", "stage1", "stage2", "tune", "unify", "rephrase", "sources"],
          ["eval", "data.tasks", "data.held_out", "data.eval_only"]),
    Stage("serve", run_serve, ["qc", "stage2", "eval"], ["serve.host", "serve.port", "serve.max_body_bytes"]),
]


def stage_names() -> list[str]:
    return [s.name for s in STAGES]
