"""The per-worker training loop for both stages: DeepSpeed inside a Ray Train TorchTrainer.

Stage I (alignment) and Stage II (instruction tuning) are this same loop with a different
``StagePlan``: which tasks, which parameters train, the learning-rate schedule, and where it
starts from. Reads top to bottom: set up, load data, train, evaluate, save.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass

import torch

__all__ = ["StagePlan", "train_loop_per_worker", "lr_lambda", "deepspeed_config"]


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
    max_steps: int
    batch_size: int  # global
    out_dir: str | None  # where rank 0 writes the final HF checkpoint; None: don't
    init_checkpoint: str | None = None  # HF checkpoint to start from (Stage II starts from Stage I)
    val_examples: int = 256
    log_every: int = 25
    checkpoint_every: int = 0


def lr_lambda(step: int, warmup_steps: int, max_steps: int) -> float:
    """Linear warmup to the peak, then cosine decay to zero (paper §3.1.1)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def deepspeed_config(micro_batch: int, zero_stage: int, grad_clip: float, dtype: str) -> dict:
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": grad_clip,
        "zero_optimization": {"stage": zero_stage},
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


def train_loop_per_worker(plan_dict: dict) -> dict | None:
    plan = StagePlan(**plan_dict)
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if plan.config["train"]["use_gpu"] else "cpu")
    import deepspeed
    import ray.train

    from ying import telemetry
    from ying.config import YingConfig
    from ying.train.data import first_records, micro_batches, split_files
    from ying.model.checkpoint import load_checkpoint, save_checkpoint
    from ying.model.processor import YingProcessor
    from ying.model.tokenizer import build_tokenizer
    from ying.model.vlm import answer_loss, apply_freeze_policy, build_model, count_parameters

    cfg = YingConfig.model_validate(plan.config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    seed = cfg.run.seed
    device = torch.device("cuda", ctx.get_local_rank()) if cfg.train.use_gpu else torch.device("cpu")

    # --- model -------------------------------------------------------------------------------
    if plan.init_checkpoint:
        model, tokenizer, processor, _ = load_checkpoint(plan.init_checkpoint)
        model.train()
    else:
        tokenizer = build_tokenizer(cfg.model.tokenizer)
        model = build_model(cfg.model, tokenizer, seed=seed)
        processor = YingProcessor(tokenizer, cfg.model.vision.image_size, cfg.model.num_query_tokens,
                                  cfg.model.max_text_tokens)
    trainable = apply_freeze_policy(model, plan.trainable)
    if rank == 0:
        print(f"[{plan.stage}] {count_parameters(model, True):,} of {count_parameters(model):,} parameters "
              f"train ({len(trainable)} tensors); tasks={plan.tasks}; world={world}, "
              f"torch threads={torch.get_num_threads()}", flush=True)

    # --- data (streamed: no worker holds a split in memory) --------------------------------
    if not split_files(plan.data_dir, "train")[1]:
        raise ValueError(f"[{plan.stage}] no training records under {plan.data_dir}/records/train")
    micro = plan.batch_size // world
    val_records = first_records(plan.data_dir, "validation", plan.tasks, plan.val_examples)[rank::world]

    # --- DeepSpeed ---------------------------------------------------------------------------
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.train.weight_decay), lr=plan.lr, betas=(0.9, 0.999))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, plan.warmup_steps, plan.max_steps)
    )
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(micro, cfg.train.zero_stage, cfg.train.grad_clip, cfg.model.dtype),
    )

    start_step = 0
    resume = ray.train.get_checkpoint()
    if resume:  # a worker restart after a failure: continue from the last reported checkpoint
        with resume.as_directory() as d:
            _, client_state = engine.load_checkpoint(d, tag="ckpt")
            start_step = int(client_state["step"])
        if rank == 0:
            print(f"[{plan.stage}] resumed at step {start_step}", flush=True)

    def report(metrics: dict, with_checkpoint: bool) -> None:
        if not with_checkpoint:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            engine.save_checkpoint(d, tag="ckpt", client_state={"step": metrics["step"]})  # collective
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))

    # --- train -------------------------------------------------------------------------------
    engine.train()
    t0 = time.time()
    window_loss, window_n, seen = 0.0, 0, 0
    history: list[dict] = []  # the logged points, for the report's loss curve
    batches = micro_batches(plan.data_dir, plan.tasks, rank, world, seed, micro,
                            cfg.train.shuffle_buffer, start_step)
    for step in range(start_step, plan.max_steps):
        batch = processor.collate([processor.encode_train(r) for r in next(batches)])
        batch = {k: v.to(device) for k, v in batch.items()}
        loss, _ = answer_loss(engine, batch)
        engine.backward(loss)
        engine.step()
        window_loss += loss.item()
        window_n += 1
        seen += plan.batch_size
        last = step + 1 == plan.max_steps
        if (step + 1) % plan.log_every == 0 or last:
            elapsed = time.time() - t0
            mean_loss = torch.tensor([window_loss / window_n], device=device)  # nccl reduces device tensors
            torch.distributed.all_reduce(mean_loss)  # the loss of the whole global batch, not rank 0's share
            metrics = {
                "step": step + 1,
                "loss": float(mean_loss) / world,
                "lr": scheduler.get_last_lr()[0],
                "samples_per_s": seen / elapsed,
            }
            window_loss, window_n = 0.0, 0
            history.append(metrics)
            if rank == 0:
                telemetry.train_loss_gauge().set(metrics["loss"], tags={"stage": plan.stage})
                telemetry.train_samples_per_s_gauge().set(metrics["samples_per_s"], tags={"stage": plan.stage})
                eta = (plan.max_steps - step - 1) * elapsed / max(1, step + 1 - start_step)
                print(f"[{plan.stage}] step {step + 1}/{plan.max_steps} loss {metrics['loss']:.4f} "
                      f"lr {metrics['lr']:.2e} {metrics['samples_per_s']:.0f} samples/s eta {eta:.0f}s", flush=True)
            ckpt_due = plan.checkpoint_every and (step + 1) % plan.checkpoint_every == 0
            if not last:
                report(metrics, with_checkpoint=bool(ckpt_due))

    # --- evaluate ----------------------------------------------------------------------------
    engine.eval()
    val_sum = torch.zeros(2, device=device)
    with torch.no_grad():
        for i in range(0, len(val_records), micro):
            batch = processor.collate([processor.encode_train(r) for r in val_records[i : i + micro]])
            batch = {k: v.to(device) for k, v in batch.items()}
            loss, n = answer_loss(engine, batch)
            val_sum += torch.tensor([float(loss) * n, n], device=device)
    torch.distributed.all_reduce(val_sum)
    val_loss = float(val_sum[0] / max(val_sum[1], 1))
    final = {
        "step": plan.max_steps,
        "loss": metrics["loss"] if plan.max_steps > start_step else float("nan"),
        "val_loss": val_loss,
        "train_seconds": time.time() - t0,
        "samples_per_s": seen / max(time.time() - t0, 1e-9),
    }
    if rank == 0:
        print(f"[{plan.stage}] done: val_loss {val_loss:.4f}", flush=True)

    # --- save --------------------------------------------------------------------------------
    if plan.out_dir:
        module = engine.module
        if cfg.train.zero_stage == 3:  # parameters are partitioned: gather them for the HF file
            with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
                if rank == 0:
                    save_checkpoint(module, tokenizer, cfg.model, plan.out_dir, {"stage": plan.stage, **final})
        elif rank == 0:
            save_checkpoint(module, tokenizer, cfg.model, plan.out_dir, {"stage": plan.stage, **final})
    report(final, with_checkpoint=True)
    if rank != 0:
        return None
    plan_summary = {k: v for k, v in asdict(plan).items() if k != "config"}
    return {**final, "history": history, "trainable": trainable, "plan": plan_summary}
