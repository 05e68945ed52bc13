r"""Ying's stage table: the paper's pipeline, stage by stage, in dependency order.

    sources -> unify -> rephrase -> qc -> stage1 -> tune -> stage2 -> eval -> report -> serve
                                 pretrain --/         |\-> ablations --------/
                                                      \--> variant_llava, variant_video, variant_zh (-> eval)

``pretrain`` (text-only bilingual pretraining of a random-init LLM) reads only the config; it runs
after qc (ordering only) and Stage I starts from its checkpoint; a pretrained LLM skips it.

The ablations branch after Stage I (and the LR search, whose lr they train at) and run beside
Stage II where the cluster has room (``ablations.parallel``); the report waits for both.

The paper's variants (``variants.enabled``: llava, zh, video; ``ying.train.variants``) are stages of
their own, from Stage I or Stage II; the eval scores their checkpoints beside Stage II's. A variant
that is not enabled finishes at once and costs nothing.

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
    if cfg.data.m3it:  # the records come from the release; no raw source is read
        if storage.is_local(cfg.data.m3it) and not os.path.isdir(cfg.data.m3it):
            problems.append(f"data.m3it={cfg.data.m3it}: no such directory")
        return problems
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
    """Real releases where the config names them; the mini-world generates the rest. With
    ``data.m3it`` the records come from that M3IT release instead, and no raw source is read."""
    from ying.data.miniworld import generate_miniworld

    cfg = ctx.cfg
    problems = missing_sources(cfg)
    if problems:
        raise ValueError("; ".join(problems))
    if cfg.data.m3it:
        print(f"[ying] sources: the M3IT release at {cfg.data.m3it}; the raw releases and the mini-world are not "
              "read", flush=True)
        return {"sources": {}, "miniworld_tasks": [], "m3it": cfg.data.m3it}
    sources = {t: p for t, p in cfg.data.sources.items() if t in cfg.data.tasks}
    missing = [t for t in cfg.data.tasks if t not in sources]
    if missing:  # drawing scenes and encoding images and videos: CPU work, scheduled as such
        sources.update(run_on_cpus(generate_miniworld, ctx.stage_dir, cfg.miniworld, cfg.run.seed, missing))
    return {"sources": sources, "miniworld_tasks": missing}


def run_unify(ctx: StageContext) -> dict:
    """The raw releases through their adapters (``ying.data.build``), or an M3IT release through its
    import (``ying.data.m3it``): the same records either way."""
    m3it = ctx.inputs["sources"]["outputs"].get("m3it")
    if m3it:
        from ying.data.m3it import import_release

        imported = import_release(m3it, ctx.stage_dir, ctx.cfg.data.tasks)
        return {"data_dir": ctx.stage_dir, "stats": imported.pop("stats"), "m3it": imported}

    from ying.data.build import build_unified

    # The build emits the records built/rejected counters itself, chunk by chunk, and prints progress.
    stats = build_unified(ctx.cfg, ctx.output_of("sources", "sources"), ctx.stage_dir)
    return {"data_dir": ctx.stage_dir, "stats": stats}


def run_rephrase(ctx: StageContext) -> dict:
    from ying.data.rephrase import rephrase_records

    rcfg = ctx.cfg.rephrase
    if ctx.inputs["unify"]["outputs"].get("m3it"):
        # M3IT's answers are the release's final ones (rephrased there where the task rephrases):
        # none is rephrased again; the records pass through as they are.
        print("[ying] rephrase: the records come from an M3IT release, whose answers are final; none is rephrased "
              "again", flush=True)
        rcfg = rcfg.model_copy(update={"tasks": []})
    counts = rephrase_records(rcfg, ctx.output_of("unify", "data_dir"), ctx.stage_dir)
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
    _count_qc_rejects(counts)
    # The paper's Stage III: statistics (Tables 2, 3, 9; Table 9 beside the paper's counts for tasks
    # built from real releases) and the review pages, of the data training reads.
    # (The seed and data.sources are already in this stage's fingerprint through unify's.)
    # CPU work (tokenizing every instruction, decoding and resizing images): a Ray task with a CPU.
    reports = run_on_cpus(write_qc_reports, ctx.stage_dir, storage.join(ctx.stage_dir, "review.html"), seed=ctx.cfg.run.seed,
                               real_release_tasks=[t for t in d.tasks if t in d.sources])
    return {"data_dir": ctx.stage_dir, "counts": counts, **reports}


def _count_qc_rejects(counts: dict) -> None:
    """QC's set-asides as ``ying_records_rejected`` (reason ``qc:<kind>``), beside unify's rejects."""
    from ying import telemetry

    for task, splits in counts.get("tasks", {}).items():
        for kind in ("invalid", "eval_only", "contamination"):
            n = sum(c.get(kind, 0) for c in splits.values())
            if n:
                telemetry.records_rejected_counter().inc(n, tags={"task": task, "reason": f"qc:{kind}"})


def pretrain_skipped(cfg: YingConfig) -> str | None:
    """Why the ``pretrain`` stage does not train (the LLM is pretrained, or it is off), or None."""
    if cfg.model.llm_path:
        return f"the LLM is pretrained (model.llm_path={cfg.model.llm_path})"
    if not cfg.train.pretrain.enabled:
        return "train.pretrain.enabled=false"
    return None


def run_pretrain(ctx: StageContext) -> dict:
    """Text-only bilingual pretraining of a random-init LLM on the mini-world's own text, before Stage I.

    The text is generated from the config alone (``ying.data.miniworld.text``): no task's records are
    read, the held-out ones included. It is written as unified records under ``<stage>/records/``
    and trained by the same Ray Train + DeepSpeed loop as Stage I and II.
    """
    from ying.data.miniworld.text import write_text_records
    from ying.train.stages import run_stage

    cfg, spec = ctx.cfg, ctx.cfg.train.pretrain
    why = pretrain_skipped(cfg)
    if why:
        print(f"[ying] pretrain: skipped ({why}); Stage I starts from the configured model", flush=True)
        return {"skipped": why, "checkpoint": None}
    counts = write_text_records(ctx.stage_dir, cfg.run.seed, {"train": spec.texts, "validation": spec.validation_texts})
    print(f"[ying] pretrain: {spec.texts} + {spec.validation_texts} English and Chinese texts written; "
          f"training the LLM on them", flush=True)
    summary = run_stage(cfg, "pretrain", ctx.stage_dir, ctx.stage_dir, context=ctx.fingerprint, fresh=ctx.force)
    return {**summary, "data_dir": ctx.stage_dir, "counts": counts}


def run_stage1(ctx: StageContext) -> dict:
    from ying.train.stages import run_stage

    # From the pretrained text LLM where the pretrain stage trained one; else the configured model.
    return run_stage(ctx.cfg, "stage1", ctx.output_of("qc", "data_dir"), ctx.stage_dir,
                     init_checkpoint=ctx.output_of("pretrain", "checkpoint"), context=ctx.fingerprint,
                     fresh=ctx.force)


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


def _run_variant(ctx: StageContext, name: str) -> dict:
    """One of the paper's variants (``ying.train.variants``), when ``variants.enabled`` lists it."""
    from ying.train.variants import VARIANT_INIT, train_variant

    if name not in ctx.cfg.variants.enabled:
        return {"enabled": False}
    summary = train_variant(ctx.cfg, name, ctx.output_of("qc", "data_dir"), ctx.stage_dir,
                            ctx.output_of(VARIANT_INIT[name], "checkpoint"), ctx.output_of("tune", "best_lr"),
                            context=ctx.fingerprint, fresh=ctx.force)
    return {"enabled": True, **summary}


def run_variant_llava(ctx: StageContext) -> dict:
    return _run_variant(ctx, "llava")


def run_variant_zh(ctx: StageContext) -> dict:
    return _run_variant(ctx, "zh")


def run_variant_video(ctx: StageContext) -> dict:
    return _run_variant(ctx, "video")


VARIANT_STAGES = ("variant_llava", "variant_video", "variant_zh")


def run_eval(ctx: StageContext) -> dict:
    from ying.eval.evaluate import evaluate_models

    checkpoints = {"stage1": ctx.output_of("stage1", "checkpoint"), "stage2": ctx.output_of("stage2", "checkpoint")}
    for stage in VARIANT_STAGES:  # the paper's variants, scored beside Ying-VLM on the same suites
        variant = ctx.inputs[stage]["outputs"]
        if variant.get("enabled"):
            checkpoints[variant["model"]] = variant["checkpoint"]
    return evaluate_models(ctx.cfg, ctx.output_of("qc", "data_dir"), checkpoints, ctx.stage_dir,
                           sources=ctx.output_of("sources", "sources"), ours="stage2")


def run_ablations(ctx: StageContext) -> dict:
    """The paper's Figures 9 and 10 and Table 5's raw-vs-rephrased answers, as Ray Tune experiments."""
    from ying.tune.ablations import run_ablations as run_experiments

    if not ctx.cfg.ablations.enabled:
        print("[ying] ablations: off (ablations.enabled=false); workflows/ablations.py runs them alone", flush=True)
        return {"enabled": False}
    results = run_experiments(ctx.cfg, ctx.output_of("qc", "data_dir"), ctx.output_of("stage1", "checkpoint"),
                              lr=ctx.output_of("tune", "best_lr"), out_dir=ctx.stage_dir,
                              fingerprint=ctx.fingerprint, fresh=ctx.force)
    return {"enabled": True, "results": storage.join(ctx.stage_dir, "results.json"),
            "trials": {e: len(v["points"]) for e, v in results.items() if isinstance(v, dict) and "points" in v}}


def run_report(ctx: StageContext) -> dict:
    """``<run_dir>/report.md``: the run, the paper's tables, the ablations and the Reproduction section."""
    from ying.eval.run_report import reproduction, write_run_report

    ablations = ctx.inputs["ablations"]["outputs"]
    results = storage.read_json(ablations["results"]) if ablations.get("enabled") else None
    metrics = ctx.output_of("eval", "metrics")
    eval_dir = storage.join(ctx.cfg.run.run_dir, "eval")
    paper = storage.join(eval_dir, "paper_results.json")
    rows = reproduction(ctx.cfg, metrics, storage.read_json(paper) if storage.exists(paper) else None, results)
    # Plots (matplotlib) and reading the eval's tables: CPU work, scheduled as such.
    path = run_on_cpus(write_run_report, ctx.cfg, ctx.inputs, metrics, eval_dir, plot_dir=ctx.stage_dir,
                       ablations=results, reproduction_rows=rows)
    for row in rows:
        print(f"[report] {row['claim']}: {row['verdict']} ({row['ours']})", flush=True)
    return {"report": path, "reproduction": rows}


def run_serve(ctx: StageContext) -> dict:
    from ying.serve.check import serve_and_check

    return serve_and_check(ctx.cfg, ctx.output_of("stage2", "checkpoint"), ctx.output_of("qc", "data_dir"))


_TRAIN_COMMON = ["run.seed", "model", "train.num_workers", "train.use_gpu", "train.zero_stage",
                 "train.weight_decay", "train.grad_clip", "train.shuffle_buffer"]

# A variant reads whether it is enabled and Stage II's recipe (its tasks come from data.*).
_VARIANT_CONFIG = _TRAIN_COMMON + ["variants.enabled", "train.stage2", "data.held_out", "data.eval_only"]

STAGES: list[Stage] = [
    Stage("sources", run_sources, [], ["run.seed", "miniworld", "data.tasks", "data.sources", "data.m3it"],
          check=missing_sources),
    Stage("unify", run_unify, ["sources"], ["run.seed", "data"]),
    Stage("rephrase", run_rephrase, ["unify"], ["rephrase"]),
    Stage("qc", run_qc, ["rephrase"], ["data.max_image_pixels", "data.eval_only", "data.contamination_guard",
                                       "data.contamination_allow"]),
    # Reads no records, only the config; after qc (ordering only): 2 CPUs hold one training at a time.
    Stage("pretrain", run_pretrain, [], _TRAIN_COMMON + ["train.pretrain"], after=lambda cfg: ["qc"]),
    Stage("stage1", run_stage1, ["qc", "pretrain"], _TRAIN_COMMON + ["train.stage1"]),
    Stage("tune", run_tune, ["qc", "stage1"], _TRAIN_COMMON + ["train.stage2", "data.held_out", "data.eval_only", "tune"]),
    Stage("stage2", run_stage2, ["qc", "stage1", "tune"], _TRAIN_COMMON + ["train.stage2", "data.held_out", "data.eval_only"]),
    # The paper's variants (off unless variants.enabled lists them): Stage II's recipe on other tasks.
    Stage("variant_llava", run_variant_llava, ["qc", "stage1", "tune"], _VARIANT_CONFIG + ["variants.llava"],
          after=lambda cfg: [] if cfg.variants.parallel else ["stage2"]),
    Stage("variant_video", run_variant_video, ["qc", "stage1", "tune"], _VARIANT_CONFIG + ["variants.video"],
          after=lambda cfg: [] if cfg.variants.parallel else ["stage2", "variant_llava"]),
    Stage("variant_zh", run_variant_zh, ["qc", "stage2", "tune"], _VARIANT_CONFIG + ["variants.zh"],
          after=lambda cfg: [] if cfg.variants.parallel else ["variant_video"]),
    Stage("eval", run_eval, ["qc", "stage1", "stage2", "sources", *VARIANT_STAGES],
          ["eval", "data.tasks", "data.held_out", "data.eval_only"]),
    Stage("ablations", run_ablations, ["qc", "stage1", "tune"],
          _TRAIN_COMMON + ["train.stage2", "data.held_out", "data.eval_only", "eval", "ablations"],
          # On a machine that cannot hold two trainings at once, after Stage II and the eval.
          after=lambda cfg: [] if cfg.ablations.parallel else ["stage2", "eval"]),
    Stage("report", run_report, ["sources", "unify", "rephrase", "qc", "stage1", "tune", "stage2", *VARIANT_STAGES,
                                 "eval", "ablations"],
          ["run.seed", "data.tasks", "data.held_out", "rephrase.provider", "rephrase.model"]),
    Stage("serve", run_serve, ["qc", "stage2", "report"], ["serve"]),
]


def stage_names() -> list[str]:
    return [s.name for s in STAGES]
