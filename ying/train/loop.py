"""The per-worker training loop for both stages: DeepSpeed inside a Ray Train TorchTrainer.

Stage I (alignment) and Stage II (instruction tuning) are this same loop with a different
``StagePlan``: which tasks, which parameters train, the learning-rate schedule, and where it
starts from. Reads top to bottom: set up, restore, train, evaluate, save.

Data arrives through Ray Data (``ray.train.get_dataset_shard``): decoding and tokenizing ran on
CPU workers, so this thread only collates and trains. A resume checkpoint holds the trainable
weights (frozen ones come back from the stage's start), the optimizer and scheduler, the data
position (epoch, micro-batches consumed) and the RNG states, plus the hash of the plan that wrote
it: a checkpoint of another plan is refused, never silently resumed.
"""

from __future__ import annotations

import math
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

__all__ = ["StagePlan", "train_loop_per_worker", "lr_lambda", "deepspeed_config", "PlanMismatchError"]


@dataclass
class StagePlan:
    """Everything one stage's workers need, as plain data (it crosses process boundaries)."""

    stage: str  # "stage1" | "stage2" | a tune trial name
    config: dict  # the resolved YingConfig, as JSON
    data_dir: str  # directory holding records/<split>/ Parquet
    tasks: list[str]
    trainable: list[str]
    lr: float
    warmup_steps: int
    max_steps: int  # optimizer steps
    batch_size: int  # global examples per optimizer step
    micro_batch_size: int  # per worker per forward pass; batch_size = micro x workers x accumulation
    out_dir: str | None  # where rank 0 writes the final HF checkpoint; None: don't
    init_checkpoint: str | None = None  # HF checkpoint to start from (Stage II starts from Stage I)
    val_examples: int = 256
    log_every: int = 25
    eval_every: int = 0  # 0: validation only at the end
    checkpoint_every: int = 0
    # RecordPolicy fields (ablations): instructions from the first k of each pool, raw answers, per-task caps.
    policy: dict = field(default_factory=dict)
    plan_hash: str = ""  # what this plan trains (config, data, init); stamped into every checkpoint


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


def _build(plan: StagePlan, cfg, device, ds_config: dict):
    """(model, tokenizer) at the stage's start: the init checkpoint, or fresh (pretrained parts or random).

    ZeRO-3 with ``train.zero_init``: built partitioned across the ranks from the start, and filled
    module by module (``build_model(partition=...)``); no rank ever holds the whole model.
    """
    from ying.model.checkpoint import load_checkpoint
    from ying.model.tokenizer import build_tokenizer
    from ying.model.vlm import build_model

    zero3 = cfg.train.zero_stage == 3 and cfg.train.zero_init
    if plan.init_checkpoint:
        keep_alive = None
        if zero3:
            # transformers loads a checkpoint partition by partition while this object lives.
            from transformers.integrations import HfDeepSpeedConfig

            keep_alive = HfDeepSpeedConfig(ds_config)  # noqa: F841
        model, tokenizer, _, _ = load_checkpoint(plan.init_checkpoint, device=None if zero3 else device,
                                                 dtype=cfg.model.dtype, attn_implementation=cfg.model.attn_implementation,
                                                 on_gpu=cfg.train.use_gpu)
        return model.train(), tokenizer
    tokenizer = build_tokenizer(cfg.model.tokenizer)
    model = build_model(cfg.model, tokenizer, seed=cfg.run.seed, device=device, on_gpu=cfg.train.use_gpu,
                        partition=ds_config if zero3 else None)
    return model.train(), tokenizer


def train_loop_per_worker(plan_dict: dict) -> dict | None:
    plan = StagePlan(**plan_dict)
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if plan.config["train"]["use_gpu"] else "cpu")
    import deepspeed
    import ray.train
    import transformers

    from ying import telemetry
    from ying.config import YingConfig
    from ying.model.checkpoint import save_checkpoint
    from ying.model.processor import YingProcessor
    from ying.model.vlm import answer_loss, apply_freeze_policy, count_parameters
    from ying.train.extension_lock import load_deepspeed_ops
    from ying.train.ingest import epoch_batches

    transformers.utils.logging.disable_progress_bar()  # one line per step is ours to print
    # Before anything starts DeepSpeed's comm backend (zero.Init, initialize): its op is loaded here under
    # a flock, so a torch build lock left by a killed run is cleared instead of waited on forever.
    load_deepspeed_ops()
    cfg = YingConfig.model_validate(plan.config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg.train.torch_threads or max(1, int(cfg.train.cpus_per_worker)))
    device = torch.device("cuda", ctx.get_local_rank()) if cfg.train.use_gpu else torch.device("cpu")
    micro = plan.micro_batch_size
    accumulation = plan.batch_size // (micro * world)
    ds_config = deepspeed_config(micro, accumulation, cfg.train.zero_stage, cfg.train.grad_clip, cfg.model.dtype)

    # --- model -------------------------------------------------------------------------------
    model, tokenizer = _build(plan, cfg, device, ds_config)
    trainable = apply_freeze_policy(model, plan.trainable)
    if cfg.train.gradient_checkpointing:
        model.language_model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    processor = YingProcessor.from_model_config(tokenizer, cfg.model)
    if rank == 0:
        print(f"[{plan.stage}] {count_parameters(model, True):,} of {count_parameters(model):,} parameters "
              f"train ({len(trainable)} tensors); tasks={plan.tasks}; world={world}, micro-batch {micro} x "
              f"{accumulation} accumulation = {plan.batch_size}/step; torch threads={torch.get_num_threads()}",
              flush=True)

    # --- DeepSpeed ---------------------------------------------------------------------------
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.train.weight_decay), lr=plan.lr, betas=(0.9, 0.999))

    def schedule(wrapped_optimizer):  # built on DeepSpeed's optimizer: ZeRO-3 regroups the parameters
        return torch.optim.lr_scheduler.LambdaLR(wrapped_optimizer,
                                                 lambda s: lr_lambda(s, plan.warmup_steps, plan.max_steps))

    engine, optimizer, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule,
                                                           config=ds_config)
    if cfg.model.llm_path and not plan.init_checkpoint:
        # The pretrained LLM's perplexity on plain sentences, through the engine: under ZeRO-3 its hooks
        # gather each layer's weights in turn (every rank takes part), so it sees the whole weights.
        from ying.model.weights import llm_sanity

        ppl = llm_sanity(engine.module.language_model, tokenizer, cfg.model.llm_path, warn=rank == 0)
        if rank == 0:
            print(f"[{plan.stage}] LLM from {cfg.model.llm_path}: perplexity {ppl:,.1f} on the sanity sentences",
                  flush=True)

    # --- restore (a restart after a failure, or a re-run of the same plan) ---------------------
    step, epoch, batches_in_epoch, history = 0, 0, 0, []
    resumed_from = None
    resume = ray.train.get_checkpoint()
    if resume:
        with resume.as_directory() as d:
            _, client_state = engine.load_checkpoint(d, tag="ckpt", load_module_strict=False)
        if client_state.get("plan_hash") != plan.plan_hash:
            raise PlanMismatchError(
                f"[{plan.stage}] refusing to resume: the checkpoint was written by training plan "
                f"{client_state.get('plan_hash')!r} and this run's plan is {plan.plan_hash!r} (config, data or "
                "initial weights differ). Start this plan from scratch: remove the checkpoint or re-run the stage.")
        step, epoch = int(client_state["step"]), int(client_state["epoch"])
        batches_in_epoch, history = int(client_state["batches_in_epoch"]), list(client_state["history"])
        _set_rng_state(client_state["rng"][rank] if rank < len(client_state["rng"]) else client_state["rng"][0])
        resumed_from = step
        if rank == 0:
            print(f"[{plan.stage}] resumed at step {step}/{plan.max_steps} (epoch {epoch}, batch {batches_in_epoch})",
                  flush=True)

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("validation") if plan.val_examples else None

    def validate() -> float | None:
        """Mean answer-token loss over this run's validation sample (every rank the same batch count)."""
        if val_shard is None:
            return None
        engine.eval()
        total = torch.zeros(2, device=device)
        with torch.no_grad():
            for batch in epoch_batches(val_shard, processor, micro, cfg.run.seed, 0, 0, cfg.train.prefetch_batches,
                                       drop_last=False):
                loss, n = answer_loss(engine, {k: v.to(device) for k, v in batch.items()})
                total += torch.tensor([float(loss) * n, n], device=device)
        engine.train()
        torch.distributed.all_reduce(total)
        return float(total[0] / total[1]) if total[1] > 0 else None

    def save_resume_checkpoint(metrics: dict) -> None:
        rngs = [None] * world
        torch.distributed.all_gather_object(rngs, _rng_state())
        state = {"step": step, "epoch": epoch, "batches_in_epoch": batches_in_epoch, "history": history,
                 "plan_hash": plan.plan_hash, "rng": rngs}
        with tempfile.TemporaryDirectory() as d:
            # Frozen weights are left out: they come back from the stage's start (init checkpoint / base model).
            engine.save_checkpoint(d, tag="ckpt", client_state=state, exclude_frozen_parameters=True)  # collective
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))

    # --- train -------------------------------------------------------------------------------
    engine.train()
    t0, t_window = time.time(), time.time()
    window_loss, window_micro, window_samples = 0.0, 0, 0
    window_tokens = 0  # non-pad positions (image queries, prompt, answer) this rank ran, for tokens/s and MFU
    while step < plan.max_steps:
        produced = False
        for batch in epoch_batches(train_shard, processor, micro, cfg.run.seed, epoch, cfg.train.shuffle_buffer,
                                   cfg.train.prefetch_batches, skip=batches_in_epoch):
            produced = True
            window_tokens += int(batch["attention_mask"].sum())  # counted on the CPU copy: no device sync
            batch = {k: v.to(device) for k, v in batch.items()}
            loss, _ = answer_loss(engine, batch)
            engine.backward(loss)
            boundary = engine.is_gradient_accumulation_boundary()
            engine.step()  # the optimizer and scheduler step only at an accumulation boundary
            batches_in_epoch += 1
            window_loss += loss.item()
            window_micro += 1
            window_samples += micro * world
            if not boundary:
                continue
            step += 1
            last = step == plan.max_steps
            val_due = plan.eval_every and step % plan.eval_every == 0
            if step % plan.log_every == 0 or last or val_due:
                elapsed = time.time() - t_window
                mean_loss = torch.tensor([window_loss / window_micro], device=device)
                torch.distributed.all_reduce(mean_loss)  # the loss of the whole global batch, not rank 0's share
                tokens = torch.tensor([window_tokens], dtype=torch.int64, device=device)  # exact, unlike a float
                torch.distributed.all_reduce(tokens)
                metrics = {"step": step, "epoch": epoch, "loss": float(mean_loss) / world,
                           "lr": scheduler.get_last_lr()[0], "samples_per_s": window_samples / max(elapsed, 1e-9),
                           "tokens": int(tokens), "tokens_per_s": int(tokens) / max(elapsed, 1e-9)}
                if val_due and not last:
                    metrics["val_loss"] = validate()
                window_loss, window_micro, window_samples, window_tokens, t_window = 0.0, 0, 0, 0, time.time()
                history.append(metrics)
                if rank == 0:
                    telemetry.train_loss_gauge().set(metrics["loss"], tags={"stage": plan.stage})
                    telemetry.train_samples_per_s_gauge().set(metrics["samples_per_s"], tags={"stage": plan.stage})
                    done = step - (resumed_from or 0)
                    eta = (plan.max_steps - step) * (time.time() - t0) / max(1, done)
                    val = f" val_loss {metrics['val_loss']:.4f}" if metrics.get("val_loss") is not None else ""
                    print(f"[{plan.stage}] step {step}/{plan.max_steps} loss {metrics['loss']:.4f}{val} "
                          f"lr {metrics['lr']:.2e} {metrics['samples_per_s']:.0f} samples/s eta {eta:.0f}s",
                          flush=True)
                if not last:
                    if plan.checkpoint_every and step % plan.checkpoint_every == 0:
                        save_resume_checkpoint(metrics)
                    else:
                        ray.train.report(metrics)
            if last:
                break
        if step < plan.max_steps:
            if not produced and batches_in_epoch == 0:
                raise ValueError(
                    f"[{plan.stage}] worker {rank}/{world} got no full micro-batch of {micro} training records of "
                    f"tasks {plan.tasks} under {plan.data_dir}; lower the batch size or add data")
            epoch, batches_in_epoch = epoch + 1, 0

    # --- evaluate ----------------------------------------------------------------------------
    val_loss = validate()
    trained = [h for h in history if "loss" in h]
    final = {
        "step": step,
        "epoch": epoch,
        "loss": trained[-1]["loss"] if trained else float("nan"),
        "val_loss": val_loss,
        "train_seconds": time.time() - t0,
        "samples_per_s": (sum(h["samples_per_s"] for h in trained) / len(trained)) if trained else 0.0,
        "resumed_from_step": resumed_from,
        # Every worker's tokens, restored windows included (benchmarks/gpu_check.py reads these two).
        "tokens": sum(h.get("tokens", 0) for h in trained),
        "peak_gpu_mem_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
    }
    if rank == 0:
        print(f"[{plan.stage}] done: val_loss {val_loss if val_loss is None else round(val_loss, 4)}", flush=True)

    # --- save --------------------------------------------------------------------------------
    if plan.out_dir:
        extra = {"stage": plan.stage, "plan_hash": plan.plan_hash, **final}
        if cfg.train.zero_stage == 3:  # partitioned: gather a 16-bit state dict on rank 0, layer by layer
            state_dict = engine._zero3_consolidated_16bit_state_dict()
            if rank == 0:
                save_checkpoint(engine.module, tokenizer, cfg.model, plan.out_dir, extra, state_dict=state_dict)
        elif rank == 0:
            save_checkpoint(engine.module, tokenizer, cfg.model, plan.out_dir, extra)
    save_resume_checkpoint(final)
    if rank != 0:
        return None
    plan_summary = {k: v for k, v in asdict(plan).items() if k != "config"}
    return {**final, "history": history, "trainable": trainable, "plan": plan_summary}
