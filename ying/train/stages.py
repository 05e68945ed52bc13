"""Stage I and Stage II as Ray Train runs (TorchTrainer + DeepSpeed), from the config.

Stage I aligns vision and language on captioning; Stage II instruction-tunes on every built task
that is not held out (paper §3.1.1, Figure 8). Both run ``train_loop_per_worker``.

A run resumes the latest complete resume checkpoint under ``<storage>/<run name>/resume`` (written
by the workers themselves, see ``ying.train.loop``). So a run's name carries the hash of its plan
(its typed fields, data, initial weights, and the stage's fingerprint when the DAG runs it): a
re-run after any change trains from the intended start, and a crash of the same plan resumes where
it stopped, on the same records. Runs of older plans are removed when a new plan starts; the
checkpoint itself also carries the plan hash and refuses a mismatch (``PlanMismatchError``).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from typing import Mapping

import ray

from ying import storage
from ying.config import YingConfig
from ying.console import TRAIN_LOG_LEVEL
from ying.data.records import count_records, data_fingerprint
from ying.train.ingest import IngestOptions, RecordPolicy, select_ids
from ying.train.loop import StagePlan, plan_fields, train_loop_per_worker
from ying.train.sampler import record_index

__all__ = ["stage_plan", "stage_tasks", "plan_hash", "fit", "fit_stage", "run_stage", "trainer_for", "resume_dir"]


def stage_tasks(cfg: YingConfig, stage: str, present: Mapping[str, int] | None = None) -> list[str]:
    """Stage I: its configured tasks. Stage II: configured tasks, else every built task minus the
    held-out and eval-only ones and those outside the 40 tasks' mix (``TaskSpec.stage2_mix``: LAION,
    LLaVA), which train only where a stage lists them.

    ``present`` (task -> training records, from the data dir) makes "every built task" the tasks the
    data holds: an M3IT release's tasks that Ying does not know train too (after data.tasks' order)."""
    from ying.data.tasks import TASKS

    spec = getattr(cfg.train, stage)
    if spec.tasks is not None:
        return list(spec.tasks)
    excluded = set(cfg.data.held_out) | set(cfg.data.eval_only)
    built = list(cfg.data.tasks) if present is None else (
        [t for t in cfg.data.tasks if present.get(t)] + sorted(t for t in present if t not in cfg.data.tasks))
    return [t for t in built if t not in excluded and (t not in TASKS or TASKS[t].SPEC.stage2_mix)]


def _init_identity(init_checkpoint: str | None) -> str | None:
    """The initial weights, for the plan hash: the metadata the checkpoint was written with."""
    if not init_checkpoint:
        return None
    from ying.model.checkpoint import YING_MODEL_FILE

    path = storage.join(init_checkpoint, YING_MODEL_FILE)
    return storage.fingerprint(storage.read_json(path)) if storage.exists(path) else f"path:{init_checkpoint}"


def plan_hash(plan: StagePlan, context: str = "") -> str:
    """What a plan trains: its fields (execution-only ones excluded: ``EXECUTION_FIELDS``), the data
    it reads and the weights it starts from; ``context`` adds the caller's own identity (the DAG
    stage's fingerprint, which also covers the code)."""
    return storage.fingerprint({
        "plan": plan_fields(plan),
        "data": data_fingerprint(plan.data_dir),
        "init": _init_identity(plan.init_checkpoint),
        "context": context,
    })


def stage_plan(cfg: YingConfig, stage: str, data_dir: str, out_dir: str | None,
               init_checkpoint: str | None = None, context: str = "", name: str | None = None,
               **overrides) -> StagePlan:
    """The plan of ``stage`` (``overrides`` replace fields, e.g. a Tune trial's lr, steps and seed),
    with its record indexes, hashed. ``name``: the plan's own name where it is not ``stage`` (a
    variant trains with Stage II's settings under its own name). The config is read here and nowhere below: the workers get
    typed fields."""
    from ying.data.records import task_counts

    spec = getattr(cfg.train, stage)
    t = cfg.train
    tasks = overrides.pop("tasks", None) or (list(spec.tasks) if spec.tasks is not None
                                             else stage_tasks(cfg, stage, task_counts(data_dir, "train")))
    lr = overrides.pop("lr", None) or spec.lr
    if lr is None:
        raise ValueError(f"train.{stage}.lr is not set and no searched learning rate was given: set "
                         f"train.{stage}.lr or run the tune stage")
    max_steps = overrides.pop("max_steps", None) or spec.max_steps
    if max_steps is None:  # the paper gives Stage II in epochs: convert with the real record count
        n_train = count_records(data_dir, "train", tasks)
        max_steps = max(spec.warmup_steps + 1, math.ceil(spec.epochs * n_train / spec.batch_size))
    workers = max(overrides.pop("num_workers", None) or t.num_workers, 1)
    batch_size = overrides.pop("batch_size", None) or spec.batch_size
    # The configured micro-batch belongs to the configured batch; another batch divides by the workers.
    micro = (overrides.pop("micro_batch_size", None)
             or (spec.micro_batch_size if batch_size == spec.batch_size else None) or batch_size // workers)
    plan = StagePlan(
        stage=name or stage,
        data_dir=data_dir,
        tasks=tasks,
        trainable=list(spec.trainable),
        lr=lr,
        warmup_steps=spec.warmup_steps,
        max_steps=max_steps,
        batch_size=batch_size,
        micro_batch_size=micro,
        out_dir=out_dir,
        model=cfg.model,
        seed=cfg.run.seed,
        num_workers=workers,
        init_checkpoint=init_checkpoint,
        val_examples=spec.val_examples,
        eval_every=spec.eval_every,
        checkpoint_every=spec.checkpoint_every,
        use_gpu=t.use_gpu,
        zero_stage=t.zero_stage,
        zero_init=t.zero_init,
        gradient_checkpointing=t.gradient_checkpointing,
        weight_decay=t.weight_decay,
        grad_clip=t.grad_clip,
        shuffle_buffer=t.shuffle_buffer,
        torch_threads=t.torch_threads or max(1, int(t.cpus_per_worker)),
        ingest=IngestOptions(tasks=t.data_tasks, task_cpus=t.data_task_cpus, cpu_limit=t.data_cpus,
                             prefetch_batches=t.prefetch_batches, read_ahead=t.read_ahead),
    )
    for k, v in overrides.items():
        if not hasattr(plan, k):
            raise TypeError(f"stage_plan: StagePlan has no field {k!r}")
        setattr(plan, k, v)
    if plan.batch_size % (plan.micro_batch_size * workers):
        raise ValueError(f"{stage}: batch_size {plan.batch_size} is not micro_batch_size {plan.micro_batch_size} "
                         f"x {workers} workers x a whole number of accumulation steps")
    _index_records(plan)
    plan.plan_hash = plan_hash(plan, context)
    return plan


def _index_records(plan: StagePlan) -> None:
    """The plan's training and validation record indexes (the sampler orders them per epoch and rank)."""
    policy = RecordPolicy(**plan.policy)
    train_ids = None
    if policy.max_per_task:
        chosen = select_ids(plan.data_dir, "train", plan.tasks, policy.max_per_task, plan.seed)
        train_ids = sorted(i for ids in chosen.values() for i in ids)
    plan.train_index = record_index(plan.data_dir, "train", plan.tasks, train_ids)
    if not plan.train_index.total:
        raise ValueError(f"no training records of tasks {plan.tasks} under "
                         f"{plan.train_index.split_dir}")
    plan.val_index = None
    if plan.val_examples > 0:
        per_task = math.ceil(plan.val_examples / max(1, len(plan.tasks)))
        chosen = select_ids(plan.data_dir, "validation", plan.tasks, per_task, plan.seed)
        val_ids = sorted(i for ids in chosen.values() for i in ids)
        if val_ids:
            plan.val_index = record_index(plan.data_dir, "validation", plan.tasks, val_ids)


def resume_dir(storage_path: str, name: str) -> str:
    """Where a run's resume checkpoints go (``ying.train.loop.save_resume_checkpoint``)."""
    return storage.join(storage_path, name, "resume")


def trainer_for(cfg: YingConfig, plan: StagePlan, storage_path: str, name: str, callbacks=None,
                in_process: bool = False):
    """A TorchTrainer for ``plan``; ``name`` should carry the plan hash (see ``run_name``).

    The workers read their records themselves (``ying.train.sampler``): no Ray Train datasets, so
    no split that depends on which worker asks first. ``in_process``: Ray Train's local mode
    (``ScalingConfig(num_workers=0)``), the loop in this process as its one worker (see ``fit``)."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    plan.resume_dir = resume_dir(storage_path, name)
    if in_process and plan.num_workers != 1:
        raise ValueError(f"{plan.stage}: only a 1-worker plan trains in its caller's process, this one has "
                         f"{plan.num_workers} workers")

    max_failures = cfg.train.max_failures
    run_config = ray.train.RunConfig(
        name=name,  # no timestamp: re-running the same name resumes the same run
        **storage.ray_run_storage(storage_path),  # s3:// through s3fs, like the rest of the run dir
        logging_config=ray.train.LoggingConfig(log_level=TRAIN_LOG_LEVEL),  # Train's notices stay in its logs
        failure_config=ray.train.FailureConfig(max_failures=max_failures, controller_failure_limit=3),
        callbacks=callbacks or [],
    )
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"plan": plan},
        scaling_config=ray.train.ScalingConfig(
            num_workers=0 if in_process else plan.num_workers, use_gpu=plan.use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker, **({"GPU": 1} if plan.use_gpu else {})}),
        torch_config=TorchConfig(backend="nccl" if plan.use_gpu else "gloo"),
        run_config=run_config,
    )


@contextlib.contextmanager
def _one_process_group():
    """The torchrun variables for a world of one, on a free loopback port: Ray Train's local mode
    starts its process group from them (gloo, or nccl with a GPU), as a worker group's rank 0 would
    have, and DeepSpeed joins it. Afterwards the group is gone and the variables are as they were,
    even when a trial ended inside the loop (ASHA's stop is a ``SystemExit`` in the trial's thread):
    Tune reuses the process for its next trial."""
    import socket

    import torch.distributed

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        _forget_deepspeed_groups()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _forget_deepspeed_groups() -> None:
    """DeepSpeed keeps the groups it derives from the world group (a clone of it, the data-parallel
    group) in ``deepspeed.utils.groups``'s globals, which outlive the process group: the next engine
    in this process would broadcast on a destroyed group. Re-running the module's body resets them
    to their import-time values (its functions read them through the module, so every user sees it)."""
    import importlib
    import sys

    groups = sys.modules.get("deepspeed.utils.groups")
    if groups is not None:
        importlib.reload(groups)


def run_name(plan: StagePlan) -> str:
    return f"{plan.stage}-{plan.plan_hash}"


def remove_stale_runs(storage_path: str, stage: str, name: str, fresh: bool) -> None:
    """Remove the Ray Train runs of ``stage``'s other plans under ``storage_path`` (they can never be
    resumed), and run ``name`` itself too when ``fresh``."""
    fs, root = storage.filesystem(storage_path)
    if not fs.exists(root):
        return
    for entry in fs.ls(root, detail=False):
        stale = entry.rstrip("/").rsplit("/", 1)[-1]
        if (stale != name or fresh) and fs.isdir(entry) and stale.startswith(f"{stage}-"):
            print(f"[ying] {stage}: removing Ray Train run {stale} (another plan, or --force)", flush=True)
            fs.rm(entry, recursive=True)


def fit(cfg: YingConfig, plan: StagePlan, storage_path: str, name: str | None = None, fresh: bool = False,
        tune_reports: bool = False, in_process: bool = False) -> dict:
    """Run one Ray Train job; rank 0's summary (with trainable names and final metrics) comes back.

    The run lives at ``<storage_path>/<name>`` (default: the plan's hash). Runs of other plans
    there are removed first (they can never be resumed); ``fresh`` removes this plan's own as well.
    ``tune_reports``: every report is also a result of the Tune trial calling this. ``in_process``:
    a 1-worker plan trains in this process (Ray Train's local mode): no controller, helper actors or
    worker process to start, and a process that Tune reuses keeps its imports for the next trial.
    The plan, its numbers and its resume checkpoints are those of one worker in a worker group.
    """
    name = name or run_name(plan)
    remove_stale_runs(storage_path, plan.stage, name, fresh)
    callbacks = []
    if tune_reports and not in_process:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())  # the controller hands the workers' reports to the trial
    plan.report_to_tune = tune_reports and in_process  # no controller: the loop reports to Tune itself
    started = time.time()
    trainer = trainer_for(cfg, plan, storage_path, name, callbacks=callbacks, in_process=in_process)
    with _one_process_group() if in_process else contextlib.nullcontext():
        result = trainer.fit()
    if result.error:
        raise result.error
    summary = result.return_value
    if summary is None:
        raise RuntimeError(f"{name}: training returned no summary (rank 0 loop did not finish)")
    summary["timings"] = fit_timings(summary.get("timings") or {}, started, time.time())
    summary["in_process"] = in_process
    return summary


def fit_timings(worker: dict, started: float, ended: float) -> dict:
    """Where one ``fit`` went, in seconds: ``to_loop`` (the controller, the worker group and its
    processes, until rank 0's loop starts), of which ``process_to_loop`` in rank 0's process (its
    start, the loop module's imports), rank 0's steps (``worker``: imports, DeepSpeed's ops, the
    model, ``deepspeed.initialize``, restore, train, validate, checkpoints, the last report), and
    ``after_loop`` (the group's shutdown); ``overhead`` is all but training."""
    entered, returned = worker.get("loop_entered_at", started), worker.get("loop_returned_at", ended)
    steps = dict(worker.get("worker", {}))
    total = ended - started
    # A process that outlived the fit's start (a reused Tune trial's, training in-process) counts from the start.
    process_started = max(worker.get("process_started_at", started), started)
    return {"fit": round(total, 3), "to_loop": round(entered - started, 3),
            "process_to_loop": round(entered - process_started, 3), "worker": steps,
            "after_loop": round(ended - returned, 3), "overhead": round(total - steps.get("train", 0.0), 3)}


def fit_stage(cfg: YingConfig, plan: StagePlan, storage_path: str, fresh: bool = False) -> dict:
    """A stage's training run: ``fit`` in a worker group, or, for a 1-worker plan, in a Ray task that
    holds that one worker's resources (``train.cpus_per_worker``, a GPU with ``train.use_gpu``) and
    trains in its own process (Ray Train's local mode, as a 1-worker Tune trial trains).

    Why: a worker group costs a start-up of its own (Ray Train's controller and helper actors, and a
    fresh worker process that imports torch, transformers and DeepSpeed: ~15 s on 2 CPUs), while a
    task runs in one of the job's pooled worker processes, which has often imported them already.
    The weights, the numbers and the resume checkpoints are those of a worker group of one
    (``tests/test_train_in_process.py``). A task whose process dies (a lost node, the OOM killer) is
    retried up to ``train.max_failures`` times and resumes from the last resume checkpoint, as a
    worker group restarts; an error raised by training fails the stage, as it does in a group. A GPU
    task's process exits when it ends (Ray's default for GPU tasks), so none holds GPU memory after.
    """
    if plan.num_workers != 1:
        return fit(cfg, plan, storage_path, fresh=fresh)
    # The run's old plans (and with ``fresh`` its own run) go here, once: a retried task resumes.
    remove_stale_runs(storage_path, plan.stage, run_name(plan), fresh)
    task = (_fit_in_gpu_task if plan.use_gpu else _fit_in_task).options(
        num_cpus=cfg.train.cpus_per_worker, max_retries=cfg.train.max_failures, name=f"ying:{plan.stage}-train")
    return ray.get(task.remote(cfg, plan, storage_path))


def _fit_here(cfg: YingConfig, plan: StagePlan, storage_path: str) -> dict:
    from ying.console import quiet_stage_process

    quiet_stage_process()  # a pooled process: its Ray Data reads print no bars, as a worker's don't
    return fit(cfg, plan, storage_path, in_process=True)


# Ray keeps a task's process for the job's next tasks, imports and all: what a CPU stage wants. A GPU
# stage's process must exit when it ends, or its CUDA context and cached blocks stay on the GPU.
# Ray gives a task max_calls=1 only for GPUs asked for in @ray.remote, never through .options().
@ray.remote
def _fit_in_task(cfg: YingConfig, plan: StagePlan, storage_path: str) -> dict:
    return _fit_here(cfg, plan, storage_path)


@ray.remote(num_gpus=1, max_calls=1)
def _fit_in_gpu_task(cfg: YingConfig, plan: StagePlan, storage_path: str) -> dict:
    return _fit_here(cfg, plan, storage_path)


def run_stage(cfg: YingConfig, stage: str, data_dir: str, stage_dir: str,
              init_checkpoint: str | None = None, context: str = "", fresh: bool = False, name: str | None = None,
              **overrides) -> dict:
    """Train one stage (``train.<stage>``'s settings; ``name``: the run's own name, default ``stage``);
    its final HF checkpoint lands in ``<stage_dir>/hf``."""
    hf_dir = storage.join(stage_dir, "hf")
    started = time.time()
    plan = stage_plan(cfg, stage, data_dir, hf_dir, init_checkpoint, context=context, name=name, **overrides)
    planned = time.time() - started
    summary = fit_stage(cfg, plan, storage.join(stage_dir, "ray_train"), fresh=fresh)
    summary["timings"]["plan"] = round(planned, 3)  # reading the data dir's footers: the record indexes
    summary["checkpoint"] = hf_dir
    summary["run_name"] = run_name(plan)
    # How the weights were held: what a reader of the manifest needs to compare two runs' speed and memory.
    summary["zero_stage"] = cfg.train.zero_stage
    summary["zero_init"] = cfg.train.zero_init
    return summary
