"""Stage I and Stage II as Ray Train runs (TorchTrainer + DeepSpeed), from the config.

Stage I aligns vision and language on captioning; Stage II instruction-tunes on every built task
that is not held out (paper §3.1.1, Figure 8). Both run ``train_loop_per_worker``.
"""

from __future__ import annotations

import math
from dataclasses import asdict

from ying import storage
from ying.config import YingConfig
from ying.console import TRAIN_LOG_LEVEL
from ying.data.build import count_records
from ying.train.loop import StagePlan, train_loop_per_worker

__all__ = ["stage_plan", "stage_tasks", "fit", "run_stage"]


def stage_tasks(cfg: YingConfig, stage: str) -> list[str]:
    """Stage I: its configured tasks. Stage II: configured tasks, else all minus held-out/eval-only."""
    spec = getattr(cfg.train, stage)
    if spec.tasks is not None:
        return list(spec.tasks)
    excluded = set(cfg.data.held_out) | set(cfg.data.eval_only)
    return [t for t in cfg.data.tasks if t not in excluded]


def stage_plan(cfg: YingConfig, stage: str, data_dir: str, out_dir: str | None,
               init_checkpoint: str | None = None, **overrides) -> StagePlan:
    spec = getattr(cfg.train, stage)
    tasks = stage_tasks(cfg, stage)
    max_steps = spec.max_steps
    if max_steps is None:  # the paper gives Stage II in epochs: convert with the real record count
        n_train = count_records(data_dir, "train", tasks)
        max_steps = max(spec.warmup_steps + 1, math.ceil(spec.epochs * n_train / spec.batch_size))
    plan = StagePlan(
        stage=stage,
        config=cfg.to_dict(),
        data_dir=data_dir,
        tasks=tasks,
        trainable=list(spec.trainable),
        lr=spec.lr,
        warmup_steps=spec.warmup_steps,
        max_steps=max_steps,
        batch_size=spec.batch_size,
        out_dir=out_dir,
        init_checkpoint=init_checkpoint,
        checkpoint_every=spec.checkpoint_every,
    )
    for k, v in overrides.items():
        setattr(plan, k, v)
    return plan


def trainer_for(cfg: YingConfig, plan: StagePlan, storage_path: str, name: str, callbacks=None):
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    run_config = ray.train.RunConfig(
        name=name,  # no timestamp: re-running the same name resumes the same run
        **storage.ray_run_storage(storage_path),  # s3:// through s3fs, like the rest of the run dir
        logging_config=ray.train.LoggingConfig(log_level=TRAIN_LOG_LEVEL),  # Train's notices stay in its logs
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
        failure_config=ray.train.FailureConfig(max_failures=1, controller_failure_limit=3),
        callbacks=callbacks or [],
    )
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=asdict(plan),
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu),
        torch_config=TorchConfig(backend="nccl" if cfg.train.use_gpu else "gloo"),
        run_config=run_config,
    )


def fit(cfg: YingConfig, plan: StagePlan, storage_path: str, name: str) -> dict:
    """Run one Ray Train job; rank 0's summary (with trainable names and final metrics) comes back."""
    result = trainer_for(cfg, plan, storage_path, name).fit()
    if result.error:
        raise result.error
    summary = result.return_value
    if summary is None:
        raise RuntimeError(f"{name}: training returned no summary (rank 0 loop did not finish)")
    return summary


def run_stage(cfg: YingConfig, stage: str, data_dir: str, stage_dir: str,
              init_checkpoint: str | None = None) -> dict:
    """Train one stage; its final HF checkpoint lands in ``<stage_dir>/hf``."""
    hf_dir = storage.join(stage_dir, "hf")
    plan = stage_plan(cfg, stage, data_dir, hf_dir, init_checkpoint)
    summary = fit(cfg, plan, storage.join(stage_dir, "ray_train"), name=stage)
    summary["checkpoint"] = hf_dir
    return summary
