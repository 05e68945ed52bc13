"""Ying's stage table: the paper's pipeline, stage by stage, in dependency order.

    sources -> unify -> rephrase -> qc -> stage1 -> tune -> stage2 -> eval -> serve

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
    from ying.data.build import build_unified

    # The build emits the records built/rejected counters itself, chunk by chunk, and prints progress.
    stats = build_unified(ctx.cfg, ctx.output_of("sources", "sources"), ctx.stage_dir)
    return {"data_dir": ctx.stage_dir, "stats": stats}


def run_rephrase(ctx: StageContext) -> dict:
    from ying.data.rephrase import rephrase_records

    counts = rephrase_records(ctx.cfg.rephrase, ctx.output_of("unify", "data_dir"), ctx.stage_dir)
    return {"data_dir": ctx.stage_dir, "counts": counts}


def run_qc(ctx: StageContext) -> dict:
    from ying import storage
    from ying.data.qc import check_records, write_qc_reports

    d = ctx.cfg.data
    # Also the held-out policy and the contamination guard: eval-only tasks and evaluation images never
    # reach training. The checks run as Ray Data workers with a CPU each, never in this 0-CPU task.
    counts = check_records(ctx.output_of("rephrase", "data_dir"), ctx.stage_dir, d.max_image_pixels,
                           eval_only=d.eval_only, guard_mode=d.contamination_guard, allow=d.contamination_allow,
                           use_ray=True, workers=d.workers, progress_interval_s=d.progress_interval_s)
    # The paper's Stage III: statistics (Tables 2, 3, 9; Table 9 beside the paper's counts for tasks
    # built from real releases) and the review pages, of the data training reads.
    # (The seed and data.sources are already in this stage's fingerprint through unify's.)
    reports = write_qc_reports(ctx.stage_dir, storage.join(ctx.stage_dir, "review.html"), seed=ctx.cfg.run.seed,
                               real_release_tasks=[t for t in d.tasks if t in d.sources])
    return {"data_dir": ctx.stage_dir, "counts": counts, **reports}


def run_stage1(ctx: StageContext) -> dict:
    from ying.train.stages import run_stage

    return run_stage(ctx.cfg, "stage1", ctx.output_of("qc", "data_dir"), ctx.stage_dir,
                     context=ctx.fingerprint, fresh=ctx.force)


def run_tune(ctx: StageContext) -> dict:
    """Stage II's learning rate: searched (Ray Tune + ASHA) unless ``train.stage2.lr`` is set."""
    from ying.tune.lr_search import lr_search

    return lr_search(ctx.cfg, ctx.output_of("qc", "data_dir"), ctx.output_of("stage1", "checkpoint"), ctx.stage_dir,
                     fingerprint=ctx.fingerprint, fresh=ctx.force)


def run_stage2(ctx: StageContext) -> dict:
    from ying.train.stages import run_stage

    lr, source = ctx.output_of("tune", "best_lr"), ctx.output_of("tune", "lr_source")
    summary = run_stage(ctx.cfg, "stage2", ctx.output_of("qc", "data_dir"), ctx.stage_dir,
                        init_checkpoint=ctx.output_of("stage1", "checkpoint"), context=ctx.fingerprint,
                        fresh=ctx.force, lr=lr)
    return {**summary, "lr": lr, "lr_source": source}


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
    Stage("qc", run_qc, ["rephrase"], ["data.max_image_pixels", "data.eval_only", "data.contamination_guard",
                                       "data.contamination_allow"]),
    Stage("stage1", run_stage1, ["qc"], _TRAIN_COMMON + ["train.stage1"]),
    Stage("tune", run_tune, ["qc", "stage1"], _TRAIN_COMMON + ["train.stage2", "data.held_out", "data.eval_only", "tune"]),
    Stage("stage2", run_stage2, ["qc", "stage1", "tune"], _TRAIN_COMMON + ["train.stage2", "data.held_out", "data.eval_only"]),
    Stage("eval", run_eval, ["qc", "stage1", "stage2", "tune", "unify", "rephrase", "sources"],
          ["eval", "data.tasks", "data.held_out", "data.eval_only"]),
    Stage("serve", run_serve, ["qc", "stage2", "eval"], ["serve"]),
]


def stage_names() -> list[str]:
    return [s.name for s in STAGES]
