"""Stage I and Stage II as Ray Train runs (TorchTrainer + DeepSpeed), from the config.

Stage I aligns vision and language on captioning; Stage II instruction-tunes on every built task
that is not held out (paper §3.1.1, Figure 8). Both run ``train_loop_per_worker``.

A Ray Train run resumes the latest checkpoint of a run with the same name under the same storage
path. So a run's name carries the hash of its plan (config, data, initial weights, and the stage's
fingerprint when the DAG runs it): a re-run after any change trains from the intended start, and
a crash of the same plan resumes where it stopped. Runs of older plans are removed when a new plan
starts; the checkpoint itself also carries the plan hash and refuses a mismatch (``PlanMismatchError``).
"""

from __future__ import annotations

import math
from dataclasses import asdict

from ying import storage
from ying.config import YingConfig
from ying.console import TRAIN_LOG_LEVEL
from ying.data.build import count_records
from ying.train.ingest import RecordPolicy, data_identity, stage_datasets
from ying.train.loop import StagePlan, train_loop_per_worker

__all__ = ["stage_plan", "stage_tasks", "plan_hash", "fit", "run_stage", "trainer_for", "train_datasets"]


def stage_tasks(cfg: YingConfig, stage: str) -> list[str]:
    """Stage I: its configured tasks. Stage II: configured tasks, else all minus held-out/eval-only."""
    spec = getattr(cfg.train, stage)
    if spec.tasks is not None:
        return list(spec.tasks)
    excluded = set(cfg.data.held_out) | set(cfg.data.eval_only)
    return [t for t in cfg.data.tasks if t not in excluded]


def _init_identity(init_checkpoint: str | None) -> str | None:
    """The initial weights, for the plan hash: the metadata the checkpoint was written with."""
    if not init_checkpoint:
        return None
    from ying.model.checkpoint import YING_MODEL_FILE

    path = storage.join(init_checkpoint, YING_MODEL_FILE)
    return storage.fingerprint(storage.read_json(path)) if storage.exists(path) else f"path:{init_checkpoint}"


def plan_hash(cfg: YingConfig, plan: StagePlan, context: str = "") -> str:
    """What a plan trains: its fields, the config that shapes training (execution-only settings
    excluded), the data it reads and the weights it starts from; ``context`` adds the caller's own
    identity (the DAG stage's fingerprint, which also covers the code)."""
    fields = {k: v for k, v in asdict(plan).items()
              if k not in ("config", "out_dir", "log_every", "checkpoint_every", "plan_hash")}
    return storage.fingerprint({
        "plan": fields,
        "config": cfg.result_view("run.seed", "model", "train.num_workers", "train.use_gpu", "train.zero_stage",
                                  "train.weight_decay", "train.grad_clip", "train.shuffle_buffer"),
        "data": data_identity(plan.data_dir),
        "init": _init_identity(plan.init_checkpoint),
        "context": context,
    })


def stage_plan(cfg: YingConfig, stage: str, data_dir: str, out_dir: str | None,
               init_checkpoint: str | None = None, context: str = "", **overrides) -> StagePlan:
    """The plan of ``stage`` (``overrides`` replace fields, e.g. a Tune trial's lr and steps), hashed."""
    spec = getattr(cfg.train, stage)
    tasks = overrides.pop("tasks", None) or stage_tasks(cfg, stage)
    lr = overrides.pop("lr", None) or spec.lr
    if lr is None:
        raise ValueError(f"train.{stage}.lr is not set and no searched learning rate was given: set "
                         f"train.{stage}.lr or run the tune stage")
    max_steps = overrides.pop("max_steps", None) or spec.max_steps
    if max_steps is None:  # the paper gives Stage II in epochs: convert with the real record count
        n_train = count_records(data_dir, "train", tasks)
        max_steps = max(spec.warmup_steps + 1, math.ceil(spec.epochs * n_train / spec.batch_size))
    workers = max(cfg.train.num_workers, 1)
    batch_size = overrides.pop("batch_size", None) or spec.batch_size
    # The configured micro-batch belongs to the configured batch; another batch divides by the workers.
    micro = (overrides.pop("micro_batch_size", None)
             or (spec.micro_batch_size if batch_size == spec.batch_size else None) or batch_size // workers)
    plan = StagePlan(
        stage=stage,
        config=cfg.to_dict(),
        data_dir=data_dir,
        tasks=tasks,
        trainable=list(spec.trainable),
        lr=lr,
        warmup_steps=spec.warmup_steps,
        max_steps=max_steps,
        batch_size=batch_size,
        micro_batch_size=micro,
        out_dir=out_dir,
        init_checkpoint=init_checkpoint,
        val_examples=spec.val_examples,
        eval_every=spec.eval_every,
        checkpoint_every=spec.checkpoint_every,
    )
    for k, v in overrides.items():
        if not hasattr(plan, k):
            raise TypeError(f"stage_plan: StagePlan has no field {k!r}")
        setattr(plan, k, v)
    if plan.batch_size % (plan.micro_batch_size * workers):
        raise ValueError(f"{stage}: batch_size {plan.batch_size} is not micro_batch_size {plan.micro_batch_size} "
                         f"x {workers} workers x a whole number of accumulation steps")
    plan.plan_hash = plan_hash(cfg, plan, context)
    return plan


def train_datasets(cfg: YingConfig, plan: StagePlan, filesystem=None) -> dict:
    """The plan's Ray Datasets, encoded with the tokenizer the workers will train with.

    The validation sample is small and read once: it is materialized here, before training takes
    its CPUs, so only the training dataset streams (and holds ingest actors) while workers train.
    """
    from ying.model.processor import YingProcessor

    tokenizer = _stage_tokenizer(cfg, plan)
    processor = YingProcessor.from_model_config(tokenizer, cfg.model)
    return stage_datasets(plan.data_dir, plan.tasks, processor, RecordPolicy(**plan.policy), cfg.run.seed,
                          plan.val_examples, encode_tasks=cfg.train.data_tasks,
                          encode_cpus=cfg.train.data_task_cpus, filesystem=filesystem)


def _stage_tokenizer(cfg: YingConfig, plan: StagePlan):
    """The tokenizer the stage's model uses: the init checkpoint's, else the configured one."""
    from ying.model.checkpoint import load_checkpoint_tokenizer
    from ying.model.tokenizer import build_tokenizer

    if plan.init_checkpoint:
        return load_checkpoint_tokenizer(plan.init_checkpoint)
    return build_tokenizer(cfg.model.tokenizer)


def trainer_for(cfg: YingConfig, plan: StagePlan, storage_path: str, name: str, callbacks=None, datasets=None):
    """A TorchTrainer for ``plan``; ``name`` should carry the plan hash (see ``run_name``)."""
    import ray.train
    from ray.data import ExecutionOptions, ExecutionResources
    from ray.train import DataConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    max_failures = cfg.train.max_failures
    run_config = ray.train.RunConfig(
        name=name,  # no timestamp: re-running the same name resumes the same run
        **storage.ray_run_storage(storage_path),  # s3:// through s3fs, like the rest of the run dir
        logging_config=ray.train.LoggingConfig(log_level=TRAIN_LOG_LEVEL),  # Train's notices stay in its logs
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
        failure_config=ray.train.FailureConfig(max_failures=max_failures, controller_failure_limit=3),
        callbacks=callbacks or [],
    )
    data_options = ExecutionOptions()
    if cfg.train.data_cpus:
        data_options.resource_limits = ExecutionResources(cpu=cfg.train.data_cpus)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=asdict(plan),
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker, **({"GPU": 1} if cfg.train.use_gpu else {})}),
        torch_config=TorchConfig(backend="nccl" if cfg.train.use_gpu else "gloo"),
        run_config=run_config,
        datasets=datasets if datasets is not None else train_datasets(cfg, plan),
        dataset_config=DataConfig(execution_options=data_options),
    )


def run_name(plan: StagePlan) -> str:
    return f"{plan.stage}-{plan.plan_hash}"


def fit(cfg: YingConfig, plan: StagePlan, storage_path: str, name: str | None = None, fresh: bool = False,
        callbacks=None) -> dict:
    """Run one Ray Train job; rank 0's summary (with trainable names and final metrics) comes back.

    The run lives at ``<storage_path>/<name>`` (default: the plan's hash). Runs of other plans
    there are removed first (they can never be resumed); ``fresh`` removes this plan's own as well.
    """
    name = name or run_name(plan)
    fs, root = storage.filesystem(storage_path)
    if fs.exists(root):
        for entry in fs.ls(root, detail=False):
            stale = entry.rstrip("/").rsplit("/", 1)[-1]
            if (stale != name or fresh) and fs.isdir(entry) and stale.startswith(f"{plan.stage}-"):
                print(f"[ying] {plan.stage}: removing Ray Train run {stale} (another plan, or --force)", flush=True)
                fs.rm(entry, recursive=True)
    result = trainer_for(cfg, plan, storage_path, name, callbacks=callbacks).fit()
    if result.error:
        raise result.error
    summary = result.return_value
    if summary is None:
        raise RuntimeError(f"{name}: training returned no summary (rank 0 loop did not finish)")
    return summary


def run_stage(cfg: YingConfig, stage: str, data_dir: str, stage_dir: str,
              init_checkpoint: str | None = None, context: str = "", fresh: bool = False, **overrides) -> dict:
    """Train one stage; its final HF checkpoint lands in ``<stage_dir>/hf``."""
    hf_dir = storage.join(stage_dir, "hf")
    plan = stage_plan(cfg, stage, data_dir, hf_dir, init_checkpoint, context=context, **overrides)
    summary = fit(cfg, plan, storage.join(stage_dir, "ray_train"), fresh=fresh)
    summary["checkpoint"] = hf_dir
    summary["run_name"] = run_name(plan)
    # How the weights were held: what a reader of the manifest needs to compare two runs' speed and memory.
    summary["zero_stage"] = cfg.train.zero_stage
    summary["zero_init"] = cfg.train.zero_init
    return summary
