"""The per-worker training loop of every stage: DeepSpeed inside a Ray Train TorchTrainer.

Pretraining, Stage I (alignment), Stage II (instruction tuning) and every Tune or ablation trial
are this same loop with a different ``StagePlan``: which records, which parameters train, the
learning-rate schedule and where it starts from. It reads as a recipe:

    setup    the model (init checkpoint, pretrained parts or random), the freeze policy, DeepSpeed
    restore  the latest complete resume checkpoint of this plan, if any
    train    optimizer steps over the rank's records, in the order ``ying.train.sampler`` fixes
    save     validation, the final Hugging Face checkpoint, a last resume checkpoint

Reproducibility: the records each rank trains on and their order depend on (seed, epoch, rank,
world size) only, and a resume checkpoint holds the exact data position (epoch, records of the
rank's epoch already trained), the optimizer, the scheduler and every rank's RNG states. So the
same plan gives the same weights, interrupted or not. Resume checkpoints live under
``plan.resume_dir`` as ``step_<N>/``; one counts only once every rank's files are in it and rank 0
has written ``COMPLETE.json``, so a kill at any moment leaves the last complete one to resume from.
"""

from __future__ import annotations

import math
import os
import random
import tempfile
import time
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch

from ying.config import ModelConfig
from ying.train.ingest import IngestOptions, RecordPolicy
from ying.train.sampler import RecordIndex

__all__ = ["StagePlan", "train_loop_per_worker", "lr_lambda", "deepspeed_config", "PlanMismatchError",
           "latest_resume_checkpoint", "plan_fields", "EXECUTION_FIELDS"]


@dataclass
class StagePlan:
    """Everything one stage's workers need, typed (it crosses process boundaries by pickle)."""

    stage: str  # "pretrain" | "stage1" | "stage2" | a trial's name
    data_dir: str  # directory holding records/<split>/ Parquet
    tasks: list[str]
    trainable: list[str]
    lr: float
    warmup_steps: int
    max_steps: int  # optimizer steps
    batch_size: int  # global examples per optimizer step
    micro_batch_size: int  # per worker per forward pass; batch_size = micro x workers x accumulation
    out_dir: str | None  # where rank 0 writes the final HF checkpoint; None: don't
    model: ModelConfig  # what to build when there is no init checkpoint (and the processor's sizes)
    seed: int = 0  # model init, record order per epoch, instruction draws, RNG
    num_workers: int = 1
    init_checkpoint: str | None = None  # HF checkpoint to start from (Stage II starts from Stage I)
    val_examples: int = 256
    log_every: int = 25
    eval_every: int = 0  # 0: validation only at the end
    checkpoint_every: int = 0
    # RecordPolicy fields (ablations): k instructions per task drawn by seed, raw answers, per-task caps.
    policy: dict = field(default_factory=dict)
    # How the weights train (train.*).
    use_gpu: bool = False
    zero_stage: int = 2
    zero_init: bool = False
    gradient_checkpointing: bool = False
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    shuffle_buffer: int = 16384  # the sampler's window: records of a rank shuffled together
    # Execution only: how, not what (left out of the plan hash).
    torch_threads: int = 1
    # Set by ``fit`` for a Tune trial training in its own process (Ray Train's local mode): no Train
    # controller runs ``TuneReportCallback`` there, so the loop hands its reports to Tune itself.
    report_to_tune: bool = False
    ingest: IngestOptions = field(default_factory=IngestOptions)
    train_index: RecordIndex | None = None  # filled by ``stage_plan``
    val_index: RecordIndex | None = None
    resume_dir: str | None = None  # filled by ``fit``: <storage>/<run name>/resume
    filesystem: Any = None  # benchmarks read through a byte-counting filesystem
    plan_hash: str = ""  # what this plan trains (config, data, init); stamped into every checkpoint

    def summary(self) -> dict:
        """The plan as the manifest and the report show it (JSON)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in ("model", "ingest", "train_index", "val_index", "filesystem")}
        out["train_records"] = self.train_index.total if self.train_index else 0
        out["val_records"] = self.val_index.total if self.val_index else 0
        return out


# Fields that change how a plan runs, not what it trains: outside the plan hash.
EXECUTION_FIELDS = frozenset({"out_dir", "log_every", "checkpoint_every", "plan_hash", "resume_dir", "filesystem",
                              "torch_threads", "ingest", "train_index", "val_index", "zero_init", "stage",
                              "gradient_checkpointing", "report_to_tune"})


class PlanMismatchError(RuntimeError):
    """A resume checkpoint written by a different training plan."""


def lr_lambda(step: int, warmup_steps: int, max_steps: int) -> float:
    """Linear warmup to the peak, then cosine decay to zero (paper §3.1.1)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def deepspeed_config(micro_batch: int, accumulation: int, zero_stage: int, grad_clip: float, dtype: str) -> dict:
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": grad_clip,
        "zero_optimization": {"stage": zero_stage,
                              # ZeRO-3: the final HF checkpoint is gathered in 16 bit, layer by layer, on rank 0.
                              **({"stage3_gather_16bit_weights_on_model_save": True} if zero_stage == 3 else {})},
        "bf16": {"enabled": dtype == "bfloat16"},
        "fp16": {"enabled": dtype == "float16"},
        # We hand DeepSpeed a torch AdamW: its fused Adam needs CUDA, and the optimizer is ours.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # Biases and norm scales don't get weight decay (the usual AdamW recipe).
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


# --- resume checkpoints on storage (local or s3://) ------------------------------------------------
COMPLETE = "COMPLETE.json"


def latest_resume_checkpoint(resume_dir: str | None) -> tuple[str, dict] | None:
    """(step folder, its COMPLETE.json) of the latest complete resume checkpoint under ``resume_dir``."""
    from ying import storage

    if not resume_dir:
        return None
    fs, root = storage.filesystem(resume_dir)
    if not fs.exists(root):
        return None
    complete = sorted(p for p in fs.ls(root, detail=False)
                      if p.rstrip("/").rsplit("/", 1)[-1].startswith("step_") and fs.exists(f"{p}/{COMPLETE}"))
    if not complete:
        return None
    step_dir = storage.join(resume_dir, complete[-1].rstrip("/").rsplit("/", 1)[-1])
    return step_dir, storage.read_json(storage.join(step_dir, COMPLETE))


def _upload_dir(local: str, remote: str) -> None:
    from ying import storage

    fs, root = storage.filesystem(remote)
    for here, _, names in os.walk(local):
        rel = os.path.relpath(here, local)
        target = root if rel == "." else f"{root}/{rel}"
        fs.makedirs(target, exist_ok=True)
        for name in names:
            fs.put_file(os.path.join(here, name), f"{target}/{name}")


def _download_dir(remote: str, local: str) -> None:
    from ying import storage

    fs, root = storage.filesystem(remote)
    root = root.rstrip("/")
    for path in fs.find(root):
        target = os.path.join(local, path[len(root) + 1:])
        os.makedirs(os.path.dirname(target), exist_ok=True)
        fs.get_file(path, target)


# --- the recipe ---------------------------------------------------------------------------------
class _Clock:
    """Wall-clock seconds of one worker's steps outside training (the manifest's ``timings``): where a
    stage's start-up and wind-down go (``benchmarks/bench_train.py`` reads them)."""

    def __init__(self) -> None:
        self.entered = self.last = time.time()
        self.seconds: dict[str, float] = {}

    def mark(self, step: str) -> None:
        now = time.time()
        self.seconds[step] = round(self.seconds.get(step, 0.0) + now - self.last, 3)
        self.last = now

    def add(self, part: str, seconds: float) -> None:
        """Seconds of a part of a step (``train_data_wait``: training's waits on its records)."""
        self.seconds[part] = round(self.seconds.get(part, 0.0) + seconds, 3)


@dataclass
class _Run:
    """What setup builds and the other steps use."""

    engine: Any
    scheduler: Any
    tokenizer: Any
    processor: Any
    trainable: list[str]
    rank: int
    world: int
    device: torch.device
    micro: int
    clock: _Clock = field(default_factory=_Clock)
    val_batches: list | None = None
    # Record streams started before they are needed (``ingest.ReadAhead``), by (split, epoch, position).
    ahead: dict = field(default_factory=dict)
    resume_from: tuple[str, dict] | None = None  # ``latest_resume_checkpoint`` at setup, for ``restore``


@dataclass
class _State:
    """Where training stands: what a resume checkpoint restores."""

    step: int = 0
    epoch: int = 0
    position: int = 0  # records of this rank's epoch already trained: the next one is at this index
    history: list = field(default_factory=list)
    resumed_from: int | None = None


def _stage_tokenizer(plan: StagePlan):
    """The stage's tokenizer: the init checkpoint's, or the configured one (``_build``'s model matches it)."""
    if plan.init_checkpoint:
        from ying.model.checkpoint import load_checkpoint_tokenizer

        return load_checkpoint_tokenizer(plan.init_checkpoint)
    from ying.model.tokenizer import build_tokenizer

    return build_tokenizer(plan.model.tokenizer)


def _build(plan: StagePlan, device, ds_config: dict, tokenizer):
    """The model at the stage's start: the init checkpoint, or fresh (pretrained parts or random);
    ``tokenizer`` is ``_stage_tokenizer``'s (the checkpoint's own files, when there is one).

    ZeRO-3 with ``zero_init``: built partitioned across the ranks from the start, and filled
    module by module (``build_model(partition=...)``); no rank ever holds the whole model.
    """
    from ying.model.checkpoint import load_checkpoint
    from ying.model.vlm import build_model

    zero3 = plan.zero_stage == 3 and plan.zero_init
    if plan.init_checkpoint:
        keep_alive = None
        if zero3:
            # transformers loads a checkpoint partition by partition while this object lives.
            from transformers.integrations import HfDeepSpeedConfig

            keep_alive = HfDeepSpeedConfig(ds_config)  # noqa: F841
        model, _, _, _ = load_checkpoint(plan.init_checkpoint, device=None if zero3 else device,
                                         dtype=plan.model.dtype, attn_implementation=plan.model.attn_implementation,
                                         on_gpu=plan.use_gpu)
        return model.train()
    model = build_model(plan.model, tokenizer, seed=plan.seed, device=device, on_gpu=plan.use_gpu,
                        partition=ds_config if zero3 else None)
    return model.train()


def setup(plan: StagePlan, clock: _Clock | None = None) -> _Run:
    """Processor, the first records read ahead, model, freeze policy, DeepSpeed engine, optimizer and schedule."""
    clock = clock or _Clock()
    from ying.console import quiet_stage_process
    from ying.model.processor import YingProcessor

    quiet_stage_process()  # this worker's own Ray Data reads print no bars
    # The process group is up before the loop starts: TorchTrainer's backend starts it in each worker
    # (and sets RANK, LOCAL_RANK, WORLD_SIZE), Ray Train's local mode from the torchrun variables
    # ``fit`` sets. Read from torch, not from ``ray.train.get_context()``, which Ray refuses inside a
    # Tune trial's process, where a 1-worker trial trains (``ying.tune.runner``).
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    if world != plan.num_workers:
        raise RuntimeError(f"[{plan.stage}] planned for {plan.num_workers} workers, running on {world}")
    tokenizer = _stage_tokenizer(plan)
    processor = YingProcessor.from_model_config(tokenizer, plan.model)
    ahead = {}
    resume_from = latest_resume_checkpoint(plan.resume_dir)
    if resume_from is None:
        # The first epoch's first window is read while DeepSpeed is imported and the model built (a
        # resumed run starts elsewhere in its epoch, known once the checkpoint is loaded: it reads then).
        ahead[("train", 0, 0)] = _read_ahead(plan, processor, rank, world, "train", 0, 0)
    clock.mark("tokenizer")

    import deepspeed
    import transformers

    from ying.model.vlm import apply_freeze_policy, count_parameters
    from ying.train.extension_lock import load_deepspeed_ops

    clock.mark("imports")
    transformers.utils.logging.disable_progress_bar()  # one line per step is ours to print
    # Before anything starts DeepSpeed's comm backend (zero.Init, initialize): its op is loaded here under
    # a flock, so a torch build lock left by a killed run is cleared instead of waited on forever.
    load_deepspeed_ops()
    clock.mark("deepspeed_ops")
    torch.set_num_threads(plan.torch_threads)
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if plan.use_gpu else torch.device("cpu")
    micro = plan.micro_batch_size
    accumulation = plan.batch_size // (micro * world)
    ds_config = deepspeed_config(micro, accumulation, plan.zero_stage, plan.grad_clip, plan.model.dtype)

    model = _build(plan, device, ds_config, tokenizer)
    clock.mark("model")
    trainable = apply_freeze_policy(model, plan.trainable)
    if plan.gradient_checkpointing:
        model.language_model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if rank == 0:
        print(f"[{plan.stage}] {count_parameters(model, True):,} of {count_parameters(model):,} parameters "
              f"train ({len(trainable)} tensors); tasks={plan.tasks}; world={world}, micro-batch {micro} x "
              f"{accumulation} accumulation = {plan.batch_size}/step; seed {plan.seed}; "
              f"torch threads={torch.get_num_threads()}", flush=True)

    optimizer = torch.optim.AdamW(_param_groups(model, plan.weight_decay), lr=plan.lr, betas=(0.9, 0.999))

    def schedule(wrapped_optimizer):  # built on DeepSpeed's optimizer: ZeRO-3 regroups the parameters
        return torch.optim.lr_scheduler.LambdaLR(wrapped_optimizer,
                                                 lambda s: lr_lambda(s, plan.warmup_steps, plan.max_steps))

    engine, _, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule,
                                                   config=ds_config)
    clock.mark("deepspeed_initialize")
    # Dropout draws from these: seeded by (seed, rank), never left to the process's random start (a
    # stage from an init checkpoint builds nothing seeded). A resume then restores the saved states.
    random.seed(plan.seed * 1_000_003 + rank)
    np.random.seed((plan.seed * 1_000_003 + rank) % 2**32)
    torch.manual_seed(plan.seed * 1_000_003 + rank)
    if plan.model.llm_path and not plan.init_checkpoint:
        # The pretrained LLM's perplexity on plain sentences, through the engine: under ZeRO-3 its hooks
        # gather each layer's weights in turn (every rank takes part), so it sees the whole weights.
        from ying.model.weights import llm_sanity

        ppl = llm_sanity(engine.module.language_model, tokenizer, plan.model.llm_path, warn=rank == 0)
        if rank == 0:
            print(f"[{plan.stage}] LLM from {plan.model.llm_path}: perplexity {ppl:,.1f} on the sanity sentences",
                  flush=True)
        clock.mark("llm_sanity")
    return _Run(engine, scheduler, tokenizer, processor, trainable, rank, world, device, micro, clock, ahead=ahead,
                resume_from=resume_from)


def restore(plan: StagePlan, run: _Run) -> _State:
    """The latest complete resume checkpoint of this plan (a restart after a failure, or a re-run), as
    ``setup`` found it."""
    found = run.resume_from
    if not found:
        run.clock.mark("restore")
        return _State()
    step_dir, meta = found
    if meta.get("plan_hash") != plan.plan_hash:
        raise PlanMismatchError(
            f"[{plan.stage}] refusing to resume: {step_dir} was written by training plan {meta.get('plan_hash')!r} "
            f"and this run's plan is {plan.plan_hash!r} (config, data or initial weights differ). Start this "
            "plan from scratch: remove the checkpoint or re-run the stage.")
    if meta.get("world") != run.world:
        raise PlanMismatchError(f"[{plan.stage}] {step_dir} was written by {meta.get('world')} workers; this run "
                                f"has {run.world}: the data position differs. Re-run with --force.")
    with tempfile.TemporaryDirectory() as d:
        _download_dir(step_dir, d)
        _, client = run.engine.load_checkpoint(d, tag="ckpt", load_module_strict=False)
        _set_rng_state(torch.load(os.path.join(d, f"rank_{run.rank}.pt"), weights_only=False)["rng"])
    state = _State(step=int(client["step"]), epoch=int(client["epoch"]), position=int(client["position"]),
                   history=list(client["history"]), resumed_from=int(client["step"]))
    if run.rank == 0:
        print(f"[{plan.stage}] resumed at step {state.step}/{plan.max_steps} from {step_dir} (epoch {state.epoch}, "
              f"next record {state.position} of each rank's share)", flush=True)
    run.clock.mark("restore")
    return state


def save_resume_checkpoint(plan: StagePlan, run: _Run, state: _State) -> None:
    """A collective: every rank writes its shard and RNG into ``step_<N>/``; rank 0 marks it complete
    once all are in, then removes the older ones."""
    from ying import storage

    if not plan.resume_dir:
        return
    step_dir = storage.join(plan.resume_dir, f"step_{state.step:08d}")
    client = {"step": state.step, "epoch": state.epoch, "position": state.position, "history": state.history,
              "plan_hash": plan.plan_hash}
    with tempfile.TemporaryDirectory() as d:
        # Frozen weights are left out: they come back from the stage's start (init checkpoint / base model).
        run.engine.save_checkpoint(d, tag="ckpt", client_state=client, exclude_frozen_parameters=True)
        torch.save({"rng": _rng_state()}, os.path.join(d, f"rank_{run.rank}.pt"))
        _upload_dir(d, step_dir)
    torch.distributed.barrier()  # every rank's files are in
    if run.rank == 0:
        storage.write_json_atomic(storage.join(step_dir, COMPLETE),
                                  {"step": state.step, "epoch": state.epoch, "position": state.position,
                                   "plan_hash": plan.plan_hash, "world": run.world})
        fs, root = storage.filesystem(plan.resume_dir)
        for old in fs.ls(root, detail=False):
            name = old.rstrip("/").rsplit("/", 1)[-1]
            if name.startswith("step_") and name < f"step_{state.step:08d}":
                fs.rm(old, recursive=True)


def _records(plan: StagePlan, processor, rank: int, world: int, split: str, epoch: int, start: int):
    """A rank's encoded records of ``split`` ("train": shuffled windows; "validation": file order)
    for ``epoch`` from position ``start``."""
    from ying.train.ingest import encoded_rows
    from ying.train.sampler import rank_epoch_records

    policy = RecordPolicy(**plan.policy)
    index = plan.train_index if split == "train" else plan.val_index

    def read(segments):
        return encoded_rows(segments, index, processor, policy, plan.seed, plan.ingest, plan.filesystem)

    return rank_epoch_records(read, index, plan.seed, epoch, rank, world, plan.shuffle_buffer, start=start,
                              shuffle=split == "train")


def _read_ahead(plan: StagePlan, processor, rank: int, world: int, split: str, epoch: int, start: int):
    from ying.train.ingest import ReadAhead

    return ReadAhead(lambda: _records(plan, processor, rank, world, split, epoch, start),
                     name=f"ying-read-ahead-{split}-{epoch}")


def _rows(plan: StagePlan, run: _Run, split: str, epoch: int, start: int):
    """The records ``_records`` gives: read ahead when they were (the same rows), else read now."""
    ahead = run.ahead.pop((split, epoch, start), None)
    return ahead if ahead is not None else _records(plan, run.processor, run.rank, run.world, split, epoch, start)


def _read_next_ahead(plan: StagePlan, run: _Run, state: _State, share: int) -> None:
    """Once an epoch's first batch is in: read the next epoch ahead if training will reach it, and the
    validation sample if it will be needed, so neither read holds up a step later."""
    if not plan.ingest.read_ahead:
        return
    accumulation = plan.batch_size // (run.micro * run.world)
    micro_batches_needed = (plan.max_steps - state.step) * accumulation
    micro_batches_left = (share - state.position) // run.micro  # the batch in hand among them
    key = ("train", state.epoch + 1, 0)
    if micro_batches_needed > micro_batches_left and key not in run.ahead:
        run.ahead[key] = _read_ahead(plan, run.processor, run.rank, run.world, *key)
    if plan.val_index is not None and run.val_batches is None and ("validation", 0, 0) not in run.ahead:
        run.ahead[("validation", 0, 0)] = _read_ahead(plan, run.processor, run.rank, run.world, "validation", 0, 0)


def _waited(groups, clock: _Clock):
    """``groups``, each wait for the next one added to the clock's ``train_data_wait``: the part of
    training's seconds that was Ray Data's, not the model's (0 when records keep ahead of the steps)."""
    groups = iter(groups)
    while True:
        asked = time.time()
        group = next(groups, None)
        clock.add("train_data_wait", time.time() - asked)
        if group is None:
            return
        yield group


def _micro_batches(rows, micro: int, drop_last: bool):
    """Consecutive groups of ``micro`` rows (the last, shorter one only when not ``drop_last``)."""
    group = []
    for row in rows:
        group.append(row)
        if len(group) == micro:
            yield group
            group = []
    if group and not drop_last:
        yield group


def validate(plan: StagePlan, run: _Run) -> float | None:
    """Mean answer-token loss over the run's validation sample: every rank its share, in file order,
    the same batches in every run (encoded once, kept for the run's later validations)."""
    from ying.model.vlm import answer_loss
    from ying.train.ingest import collate_rows
    from ying.train.sampler import rank_share

    if plan.val_index is None or rank_share(plan.val_index.total, run.world) == 0:
        return None
    if run.val_batches is None:
        rows = _rows(plan, run, "validation", 0, 0)
        run.val_batches = [collate_rows(group, run.processor) for group in _micro_batches(rows, run.micro, False)]
    run.engine.eval()
    total = torch.zeros(2, dtype=torch.float64, device=run.device)
    with torch.no_grad():
        for batch in run.val_batches:
            loss, n = answer_loss(run.engine, {k: v.to(run.device) for k, v in batch.items()})
            total += torch.tensor([float(loss) * n, n], dtype=torch.float64, device=run.device)
    run.engine.train()
    torch.distributed.all_reduce(total)
    return float(total[0] / total[1]) if total[1] > 0 else None


def train(plan: StagePlan, run: _Run, state: _State) -> float:
    """Optimizer steps until ``plan.max_steps``; returns the seconds it trained."""
    from ying import telemetry
    from ying.model.vlm import answer_loss
    from ying.train.ingest import collate_rows
    from ying.train.sampler import rank_share

    engine, micro, world = run.engine, run.micro, run.world
    share = rank_share(plan.train_index.total, world)
    if share < micro:
        raise ValueError(
            f"[{plan.stage}] {plan.train_index.total} training records of tasks {plan.tasks} under {plan.data_dir} "
            f"give each of {world} workers {share}: less than one micro-batch of {micro}; lower the batch size "
            "or add data")
    engine.train()
    t0 = t_window = time.time()
    window_loss, window_micro, window_samples = 0.0, 0, 0
    window_tokens = 0  # non-pad positions (image queries, prompt, answer) this rank ran, for tokens/s and MFU
    while state.step < plan.max_steps:
        rows = _rows(plan, run, "train", state.epoch, state.position)
        for i, group in enumerate(_waited(_micro_batches(rows, micro, drop_last=True), run.clock)):
            if i == 0:
                _read_next_ahead(plan, run, state, share)
            batch = collate_rows(group, run.processor)
            window_tokens += int(batch["attention_mask"].sum())  # counted on the CPU copy: no device sync
            loss, _ = answer_loss(engine, {k: v.to(run.device) for k, v in batch.items()})
            engine.backward(loss)
            boundary = engine.is_gradient_accumulation_boundary()
            engine.step()  # the optimizer and scheduler step only at an accumulation boundary
            state.position += micro
            window_loss += loss.item()
            window_micro += 1
            window_samples += micro * world
            if not boundary:
                continue
            state.step += 1
            last = state.step == plan.max_steps
            val_due = plan.eval_every and state.step % plan.eval_every == 0
            if state.step % plan.log_every == 0 or last or val_due:
                elapsed = time.time() - t_window
                mean_loss = torch.tensor([window_loss / window_micro], device=run.device)
                torch.distributed.all_reduce(mean_loss)  # the loss of the whole global batch, not rank 0's share
                tokens = torch.tensor([window_tokens], dtype=torch.int64, device=run.device)  # exact, unlike a float
                torch.distributed.all_reduce(tokens)
                metrics = {"step": state.step, "epoch": state.epoch, "loss": float(mean_loss) / world,
                           "lr": run.scheduler.get_last_lr()[0], "samples_per_s": window_samples / max(elapsed, 1e-9),
                           "tokens": int(tokens), "tokens_per_s": int(tokens) / max(elapsed, 1e-9)}
                if val_due and not last:
                    metrics["val_loss"] = validate(plan, run)
                window_loss, window_micro, window_samples, window_tokens, t_window = 0.0, 0, 0, 0, time.time()
                state.history.append(metrics)
                if run.rank == 0:
                    telemetry.train_loss_gauge().set(metrics["loss"], tags={"stage": plan.stage})
                    telemetry.train_samples_per_s_gauge().set(metrics["samples_per_s"], tags={"stage": plan.stage})
                    done = state.step - (state.resumed_from or 0)
                    eta = (plan.max_steps - state.step) * (time.time() - t0) / max(1, done)
                    val = f" val_loss {metrics['val_loss']:.4f}" if metrics.get("val_loss") is not None else ""
                    print(f"[{plan.stage}] step {state.step}/{plan.max_steps} loss {metrics['loss']:.4f}{val} "
                          f"lr {metrics['lr']:.2e} {metrics['samples_per_s']:.0f} samples/s eta {eta:.0f}s",
                          flush=True)
                if not last:
                    _report(plan, metrics)
            if not last and plan.checkpoint_every and state.step % plan.checkpoint_every == 0:
                save_resume_checkpoint(plan, run, state)
            if last:
                break
        if state.step < plan.max_steps:
            state.epoch, state.position = state.epoch + 1, 0
    run.clock.mark("train")
    return time.time() - t0


def save(plan: StagePlan, run: _Run, state: _State, train_seconds: float) -> dict | None:
    """Validation, the final HF checkpoint (rank 0), a last resume checkpoint; rank 0's summary."""
    from ying.model.checkpoint import save_checkpoint

    val_loss = validate(plan, run)
    run.clock.mark("validate")
    trained = [h for h in state.history if "loss" in h]
    final = {
        "step": state.step,
        "epoch": state.epoch,
        "loss": trained[-1]["loss"] if trained else float("nan"),
        "val_loss": val_loss,
        "train_seconds": train_seconds,
        "samples_per_s": (sum(h["samples_per_s"] for h in trained) / len(trained)) if trained else 0.0,
        "resumed_from_step": state.resumed_from,
        # Every worker's tokens, restored windows included (benchmarks/gpu_check.py reads these two).
        "tokens": sum(h.get("tokens", 0) for h in trained),
        "peak_gpu_mem_bytes": torch.cuda.max_memory_allocated(run.device) if run.device.type == "cuda" else None,
    }
    if run.rank == 0:
        print(f"[{plan.stage}] done: val_loss {val_loss if val_loss is None else round(val_loss, 4)}", flush=True)
    if plan.out_dir:
        extra = {"stage": plan.stage, "plan_hash": plan.plan_hash, "seed": plan.seed, **final}
        engine = run.engine
        if plan.zero_stage == 3:  # partitioned: gather a 16-bit state dict on rank 0, layer by layer
            state_dict = engine._zero3_consolidated_16bit_state_dict()
            if run.rank == 0:
                save_checkpoint(engine.module, run.tokenizer, plan.model, plan.out_dir, extra, state_dict=state_dict)
        elif run.rank == 0:
            save_checkpoint(engine.module, run.tokenizer, plan.model, plan.out_dir, extra)
        run.clock.mark("hf_checkpoint")
    # A re-run of a finished plan (its driver died before the manifest) restores this and trains nothing.
    if state.resumed_from != state.step:
        save_resume_checkpoint(plan, run, state)
        run.clock.mark("resume_checkpoint")
    _report(plan, final)
    run.clock.mark("report")
    if run.rank != 0:
        return None
    return {**final, "history": state.history, "trainable": run.trainable, "plan": plan.summary(),
            "timings": worker_timings(run.clock)}


def _report(plan: StagePlan, metrics: dict) -> None:
    """A report to Ray Train (a barrier across the workers), or to Ray Tune where the loop runs in a
    Tune trial's own process (``plan.report_to_tune``: Ray refuses ``ray.train.report`` there, and in
    local mode it would only keep the last metrics). When ASHA stops such a trial, Tune's ``report``
    ends the trial's thread with ``SystemExit`` (``ying.train.stages.fit`` cleans up after it).

    Ray Train V2 keeps one pending report per worker, which its controller collects once per health
    check (``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``): a synchronous report waits for that collection, up
    to a whole interval per report. Sent in Ray's report thread (``CheckpointUploadMode.ASYNC``, which
    keeps the reports' order, and which Ray drains before the worker's loop counts as returned),
    training goes on meanwhile.
    """
    if plan.report_to_tune:
        import ray.tune

        ray.tune.report(dict(metrics))
        return
    import ray.train

    ray.train.report(metrics, checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC)


def worker_timings(clock: _Clock) -> dict:
    """Rank 0's clock: when its process started and the loop was entered (Ray's worker start, the loop
    module's imports), then each step's seconds, and when the loop returned (the driver adds its own
    ends: ``ying.train.stages.fit_timings``)."""
    import psutil

    return {"process_started_at": psutil.Process().create_time(), "loop_entered_at": clock.entered,
            "loop_returned_at": time.time(), "worker": dict(clock.seconds)}


def train_loop_per_worker(config: dict) -> dict | None:
    """Ray Train's entry point: ``config["plan"]`` is the StagePlan."""
    plan: StagePlan = config["plan"]
    clock = _Clock()
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if plan.use_gpu else "cpu")
    run = setup(plan, clock)
    state = restore(plan, run)
    seconds = train(plan, run, state)
    return save(plan, run, state, seconds)


def plan_fields(plan: StagePlan) -> dict:
    """The fields that say what a plan trains (the plan hash's input), as JSON."""
    from ying.config import execution_only_paths

    out = {f.name: getattr(plan, f.name) for f in fields(plan) if f.name not in EXECUTION_FIELDS}
    model = plan.model.model_dump(mode="json")
    for path in execution_only_paths(ModelConfig):  # e.g. the attention kernel: how, not what
        *parents, leaf = path.split(".")
        node = model
        for key in parents:
            node = node.get(key, {})
        node.pop(leaf, None)
    out["model"] = model
    return out
