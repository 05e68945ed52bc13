"""The paper's model variants (Tables 5-8): Stage II's recipe on other tasks, from another checkpoint.

    llava  Ying-VLM_LLaVA   from Stage I,  on the LLaVA conversations only
    zh     Ying-VLM_zh      from Stage II, on the Chinese tasks' training splits (continual training;
                            Table 6's last row, with its forgetting elsewhere)
    video  Ying-VLM_video   from Stage I,  on Stage II's mix plus the video tasks (Table 7's last row)

Each is a DAG stage (``ying.pipeline``) trained by ``ying.train.stages.run_stage`` with Stage II's
batch, warm-up and trainable set; ``variants.<name>`` may set its steps, lr, tasks and workers. The eval stage
scores the variants' checkpoints beside Stage II's on the same suites (``VARIANT_MODELS`` names
their rows).
"""

from __future__ import annotations

from ying.config import YingConfig

__all__ = ["VARIANT_MODELS", "VARIANT_INIT", "variant_tasks", "train_variant"]

# The model name each variant's rows carry in metrics.json and the report's tables.
VARIANT_MODELS = {"llava": "ying-vlm-llava", "zh": "ying-vlm-zh", "video": "ying-vlm-video"}
# The DAG checkpoint each variant starts from.
VARIANT_INIT = {"llava": "stage1", "zh": "stage2", "video": "stage1"}


def variant_tasks(cfg: YingConfig, name: str, present: dict[str, int]) -> list[str]:
    """The tasks variant ``name`` trains on: ``variants.<name>.tasks``, else its own set among the
    tasks with training records (``present``: task -> train records)."""
    from ying.data.tasks import TASKS
    from ying.train.stages import stage_tasks

    if name not in VARIANT_MODELS:
        raise ValueError(f"unknown variant {name!r}; the paper's are {', '.join(VARIANT_MODELS)}")
    configured = getattr(cfg.variants, name).tasks
    if configured is not None:
        return list(configured)

    def spec(task: str):
        return TASKS[task].SPEC if task in TASKS else None

    if name == "llava":
        return ["llava"] if present.get("llava") else []
    if name == "zh":  # every Chinese task, the held-out ones included: Stage II never saw them
        return [t for t in present if spec(t) and spec(t).lang == "zh" and t not in cfg.data.eval_only]
    mix = stage_tasks(cfg, "stage2", present)
    video = [t for t in present if spec(t) and spec(t).category == "video" and t not in cfg.data.eval_only]
    return list(dict.fromkeys(mix + video))


def train_variant(cfg: YingConfig, name: str, data_dir: str, stage_dir: str, init_checkpoint: str,
                  stage2_lr: float, context: str = "", fresh: bool = False) -> dict:
    """Train variant ``name`` from ``init_checkpoint``; its checkpoint lands in ``<stage_dir>/hf``."""
    from ying.data.records import task_counts
    from ying.train.stages import run_stage

    run = getattr(cfg.variants, name)
    present = task_counts(data_dir, "train")
    tasks = variant_tasks(cfg, name, present)
    if not tasks or not any(present.get(t) for t in tasks):
        need = {"llava": "the llava task (data.tasks with llava, data.sources.llava=<dir> or the mini-world)",
                "zh": "a Chinese task (lang zh) in data.tasks", "video": "the Stage II tasks"}[name]
        raise ValueError(f"variant {name}: no training records of its tasks {tasks or '(none)'} under {data_dir}; "
                         f"it needs {need}, or set variants.{name}.tasks")
    lr = run.lr or stage2_lr
    steps = run.max_steps or cfg.train.stage2.max_steps  # None: Stage II's epochs, over these tasks' records
    length = f"{steps} steps" if steps else f"{cfg.train.stage2.epochs:g} epochs"
    print(f"[ying] variant {name} ({VARIANT_MODELS[name]}): from {VARIANT_INIT[name]}, {length} at lr {lr:g} "
          f"on {', '.join(f'{t} ({present.get(t, 0):,} records)' for t in tasks)}", flush=True)
    workers = {"num_workers": run.num_workers} if run.num_workers else {}
    summary = run_stage(cfg, "stage2", data_dir, stage_dir, init_checkpoint=init_checkpoint, context=context,
                        fresh=fresh, lr=lr, tasks=tasks, max_steps=steps, name=name, **workers)
    return {**summary, "variant": name, "model": VARIANT_MODELS[name], "tasks": tasks, "lr": lr,
            "init": VARIANT_INIT[name]}
