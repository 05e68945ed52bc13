"""Ying's stage table: the paper's pipeline, stage by stage, in dependency order.

    sources -> unify -> rephrase -> qc -> stage1 -> stage2 -> tune -> eval -> serve

Each stage is a plain function of a ``StageContext`` that calls one module's entry point and
returns what later stages and the report need (paths, counts, metrics). ``ying.workflow`` runs
them as Ray tasks and skips those already done.
"""

from __future__ import annotations

from ying.workflow import Stage, StageContext

__all__ = ["STAGES", "stage_names"]


def run_sources(ctx: StageContext) -> dict:
    """Real releases where the config names them; the mini-world generates the rest."""
    from ying.data.miniworld import generate_miniworld

    cfg = ctx.cfg
    sources = {t: p for t, p in cfg.data.sources.items() if t in cfg.data.tasks}
    missing = [t for t in cfg.data.tasks if t not in sources]
    if missing and not cfg.miniworld.enabled:
        raise ValueError(
            f"no source path for tasks {missing}: set data.sources.<task>=<dir of the release>, "
            "or miniworld.enabled=true to generate synthetic ones"
        )
    if missing:
        sources.update(generate_miniworld(ctx.stage_dir, cfg.miniworld, cfg.run.seed, missing))
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
    from ying import storage
    from ying.data.qc import check_records
    from ying.data.review import write_review_page
    from ying.data.stats import write_stats

    # Also the held-out policy and the contamination guard: eval-only tasks and evaluation images never reach training.
    counts = check_records(ctx.output_of("rephrase", "data_dir"), ctx.stage_dir, ctx.cfg.data.max_image_pixels,
                           eval_only=ctx.cfg.data.eval_only)
    # The paper's Stage III: statistics (Tables 2, 3, 9) and the review page, of the data training reads.
    # (The seed is already in this stage's fingerprint through unify's.)
    stats = write_stats(ctx.stage_dir, ctx.stage_dir)
    review = write_review_page(ctx.stage_dir, storage.join(ctx.stage_dir, "review.html"), seed=ctx.cfg.run.seed)
    return {"data_dir": ctx.stage_dir, "counts": counts, "stats_json": stats["stats_json"],
            "stats_md": stats["stats_md"], "review_html": review["path"]}


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
    report_path = write_run_report(ctx.cfg, ctx.inputs, result["metrics"], ctx.stage_dir)
    return {**result, "report": report_path}


def run_serve(ctx: StageContext) -> dict:
    from ying.serve.check import serve_and_check

    return serve_and_check(ctx.cfg, ctx.output_of("stage2", "checkpoint"), ctx.output_of("qc", "data_dir"))


_TRAIN_COMMON = ["run.seed", "model", "train.num_workers", "train.use_gpu", "train.zero_stage",
                 "train.weight_decay", "train.grad_clip", "train.shuffle_buffer"]

STAGES: list[Stage] = [
    Stage("sources", run_sources, [], ["run.seed", "miniworld", "data.tasks", "data.sources"]),
    Stage("unify", run_unify, ["sources"], ["run.seed", "data"]),
    Stage("rephrase", run_rephrase, ["unify"], ["rephrase"]),
    Stage("qc", run_qc, ["rephrase"], ["data.max_image_pixels", "data.eval_only"]),
    Stage("stage1", run_stage1, ["qc"], _TRAIN_COMMON + ["train.stage1"]),
    Stage("stage2", run_stage2, ["qc", "stage1"], _TRAIN_COMMON + ["train.stage2", "data.held_out", "data.eval_only"]),
    # Tune waits for Stage II: both want every CPU of a small machine, and the DAG is a chain.
    Stage("tune", run_tune, ["qc", "stage1", "stage2"], _TRAIN_COMMON + ["train.stage2", "data.held_out", "data.eval_only", "tune"]),
    Stage("eval", run_eval, ["qc", "stage1", "stage2", "tune", "unify", "rephrase", "sources"],
          ["eval", "data.tasks", "data.held_out", "data.eval_only"]),
    Stage("serve", run_serve, ["qc", "stage2", "eval"], ["serve"]),
]


def stage_names() -> list[str]:
    return [s.name for s in STAGES]
