"""One-GPU check of the product's training path (Ray Train + DeepSpeed) at the paper's widths:
training tokens/s and model FLOPs utilisation (MFU) of Stage I and Stage II, peak GPU memory, and
batched greedy generation tokens/s.

    python benchmarks/gpu_check.py                  # one GPU; sized for < 5 minutes on an H100, Ray start included
    python benchmarks/gpu_check.py --llm-layers 12  # more of the 13B LLM's 40 layers
    python benchmarks/gpu_check.py --smoke          # the same path on the CPU at tiny widths (CI runs this)

What runs is what `ying stage1` / `ying stage2` run, with nothing of its own in the step:
  data       a few hundred synthetic records written in the records layout (records/train/*.parquet,
             ying.data.schema.RECORD_SCHEMA): coco captioning rows, one image each at the preset's
             image size, text longer than model.max_text_tokens, so the processor cuts every example
             to exactly 1 + 32 + --text-tokens positions (no padding)
  stage1     ying.train.stages.stage_plan + fit: a TorchTrainer of one worker running
             ying.train.loop.train_loop_per_worker (DeepSpeed, ZeRO as the paper preset: 3 with
             zero_init), records read and encoded by Ray Data; the paper's Stage I trainable set
             (train.stage1.trainable: Q-Former, query tokens, projection); micro-batch 8 x 4
             accumulation steps = what one of the paper's 8 GPUs does per optimizer step
  stage2     the same from Stage I's checkpoint, the paper's Stage II set (also the LLM's q_proj and
             v_proj); micro-batch 4 x 8 accumulation
  generate   Stage II's checkpoint loaded by ying.model.checkpoint.load_checkpoint, then
             ying.model.inference.generate_greedy (the generator eval and Serve use) on a batch
The model is the paper preset (load_config("paper")) with random weights (nothing is downloaded:
model.blip2_path/llm_path null, the built-in BPE tokenizer): BLIP-2's ViT-g (1408 wide, 39
layers), Q-Former (768 wide, 12 layers, 32 queries), a LLaMA-13B-shaped LLM (5120 wide, 40 heads,
13824 MLP) cut to --llm-layers layers; bfloat16, sdpa attention, gradient checkpointing of the
LLM. The BPE has ~3.2k tokens where Ziya has 39k: the LM head is smaller than the real one.

Reading the JSON (the last line):
  path                  "ray_train_deepspeed": the numbers come from the product's training loop
  stage1, stage2        tokens_per_s: non-pad positions (image queries, prompt, answer) the loop
                        trained per second, counted by the loop per micro-batch; the first logging
                        window (data pipeline start, allocator, kernel choice) is left out.
                        model_flops_per_token, model_tflops_per_s, mfu (and for stage2 mfu_goal);
                        peak_gpu_mem_gib (torch.cuda.max_memory_allocated in the worker: model build,
                        DeepSpeed and training); min_window_s, the shortest measured window
  generation            tokens_per_s: new tokens of the whole batch (every row generates exactly
                        --gen-tokens: EOS is held back) over the wall time of generate_greedy,
                        prefill and image encoding included
  phases_s              wall seconds of each phase, Ray start-up included

MFU = training tokens/s x model FLOPs per token / the GPU's peak dense bf16 FLOP/s. Model FLOPs per
token are one example's FLOPs over its positions, for the matmuls the step must compute given which
parameters train and which only pass gradients through:
  forward      2 x weights x tokens for every matmul: the ViT over 257 tokens per image (256 for
               the patch embedding), the Q-Former over the 32 queries (its cross-attention keys and
               values over the 257 image tokens), the projection over 32, the LLM over the whole
               sequence and its LM head over the answer positions (the loss's only positions:
               ying.model.vlm.answer_loss computes no other logits); attention adds 4 x Lq x Lk x
               width per layer (QK^T and AV; the causal LLM counted over the full square, as PaLM's
               MFU does)
  backward     + the same again for the gradients of a matmul's input wherever a gradient must flow
               through it (a trainable parameter lies before it: in both stages the Q-Former trains,
               so the whole LLM and LM head pass gradients; the frozen ViT does not), attention 2 x
               forward there; + the same again for the weight gradients of trainable matrices
  not counted  gradient checkpointing's recomputation (it is hardware FLOPs, not model FLOPs),
               norms, activations, the loss, the optimizer step
Peak bf16 dense FLOP/s: --peak-tflops, else this table, by torch.cuda.get_device_name
(NVIDIA data sheets, without sparsity): H100 SXM 989, H100 PCIe 756, H100 NVL 835, H200/GH200 989,
A100 312, L40S 362, L40 181, L4 121, A10 125. The issue's goal: Stage II MFU >= 0.45 at the default size on
an H100. Without a CUDA GPU (and without --smoke) the script stops at once and measures nothing.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PATH = "ray_train_deepspeed"
MFU_GOAL_STAGE2 = 0.45

# (pattern searched in torch.cuda.get_device_name, dense bf16 TFLOP/s, label); the first match
# wins, so the PCIe and NVL parts come before the plain "H100" of the SXM part ("NVIDIA H100 80GB
# HBM3"); whole words where a longer name would match wrongly (L40S / L40 / L4; A10 / A10G, whose
# peak NVIDIA does not publish).
PEAK_BF16_TFLOPS = [
    (r"H100 PCIe", 756.0, "H100 PCIe"),
    (r"H100 NVL", 835.0, "H100 NVL"),
    (r"H100", 989.0, "H100 SXM"),
    (r"H200", 989.0, "H200 / GH200"),
    (r"A100", 312.0, "A100"),
    (r"\bL40S\b", 362.0, "L40S"),
    (r"\bL40\b", 181.0, "L40"),
    (r"\bL4\b", 121.0, "L4"),
    (r"\bA10\b", 125.0, "A10"),
]

# --smoke: the paper preset's code path at widths a 2-core CPU trains in seconds.
SMOKE_MODEL = [
    "model.vision={image_size: 32, patch_size: 16, hidden_size: 64, num_layers: 2, num_heads: 2, intermediate_size: 128}",
    "model.qformer={hidden_size: 64, num_layers: 2, num_heads: 2, intermediate_size: 128, cross_attention_frequency: 2}",
    "model.llm={hidden_size: 64, num_layers: 2, num_heads: 2, intermediate_size: 128, max_position_embeddings: 256}",
    "model.num_query_tokens=4",
    "model.tokenizer={kind: bpe, vocab_size: 1024}",
    "model.dtype=float32",
]


def peak_tflops(device_name: str, override: float | None) -> tuple[float | None, str | None]:
    """(peak dense bf16 TFLOP/s, where it came from) for ``device_name``; (None, None) when unknown."""
    if override:
        return override, "--peak-tflops"
    for pattern, value, label in PEAK_BF16_TFLOPS:
        if re.search(pattern, device_name):
            return value, f"table: {label}"
    return None, None


# --- the model's FLOPs ---------------------------------------------------------------------------

def model_flops_per_example(model, trainable: set[str], seq_tokens: int, answer_tokens: int, n_images: int = 1) -> float:
    """Forward + backward model FLOPs of one example of ``seq_tokens`` positions, ``answer_tokens`` of
    them predicting an answer token (the LM head's positions; see the module docstring).

    ``model`` may be on the meta device: only names and shapes are read. Gradients flow through a
    whole part (ViT, Q-Former, projection, LLM) when a parameter of it or of an earlier part
    trains: exact for the paper's trainable sets, where the Q-Former's query tokens train.
    """
    cfg = model.config
    vision_tokens = (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2 + 1  # patches + CLS
    queries = cfg.num_query_tokens

    def trains(prefix: str) -> bool:
        return any(name.startswith(prefix) for name in trainable)

    vision_grad = trains("vision_model.")
    qformer_grad = vision_grad or trains("query_tokens") or trains("qformer.")
    projection_grad = qformer_grad or trains("language_projection.")
    llm_grad = projection_grad or trains("language_model.")

    flops = 0.0
    layers = {"vision": 0, "qformer_self": 0, "qformer_cross": 0, "llm": 0}
    for name, p in model.named_parameters():
        if re.fullmatch(r"vision_model\.encoder\.layers\.\d+\.self_attn\.qkv\.weight", name):
            layers["vision"] += 1
        elif re.fullmatch(r"qformer\.encoder\.layer\.\d+\.attention\.attention\.query\.weight", name):
            layers["qformer_self"] += 1
        elif re.fullmatch(r"qformer\.encoder\.layer\.\d+\.crossattention\.attention\.query\.weight", name):
            layers["qformer_cross"] += 1
        elif re.fullmatch(r"language_model\.model\.layers\.\d+\.self_attn\.q_proj\.weight", name):
            layers["llm"] += 1
        if not name.endswith(".weight") or p.ndim < 2 or name.endswith("embed_tokens.weight"):
            continue  # norms, biases, position/class embeddings, query tokens: no matmul; embed_tokens: a lookup
        if name.startswith("vision_model.embeddings.patch_embedding"):
            tokens, input_grad = (vision_tokens - 1) * n_images, False  # a conv over the patches; pixels need no gradient
        elif name.startswith("vision_model."):
            tokens, input_grad = vision_tokens * n_images, vision_grad
        elif re.search(r"\.crossattention\.attention\.(key|value)\.weight$", name):
            tokens, input_grad = vision_tokens * n_images, vision_grad  # keys/values of the image features
        elif name.startswith("qformer."):
            tokens, input_grad = queries * n_images, qformer_grad
        elif name.startswith("language_projection."):
            tokens, input_grad = queries * n_images, projection_grad
        elif name.startswith("language_model.lm_head."):
            tokens, input_grad = answer_tokens, llm_grad
        elif name.startswith("language_model."):
            tokens, input_grad = seq_tokens, llm_grad
        else:
            raise ValueError(f"model_flops_per_example: no rule for parameter {name!r}; the model changed, extend the count")
        forward = 2.0 * p.numel() * tokens
        flops += forward * (1 + int(input_grad) + int(name in trainable))

    def attention(lq: int, lk: int, width: int) -> float:
        return 4.0 * lq * lk * width  # QK^T and AV, forward

    vision_width = cfg.vision_config.hidden_size
    qformer_width = cfg.qformer_config.hidden_size
    flops += layers["vision"] * attention(vision_tokens, vision_tokens, vision_width) * n_images * (1 + 2 * vision_grad)
    flops += layers["qformer_self"] * attention(queries, queries, qformer_width) * n_images * (1 + 2 * qformer_grad)
    # Cross-attention backward: dP and dQ (1 x forward) for the queries; dK and dV only when the ViT trains.
    flops += (layers["qformer_cross"] * attention(queries, vision_tokens, qformer_width) * n_images
              * (1 + int(qformer_grad) + int(vision_grad)))
    flops += layers["llm"] * attention(seq_tokens, seq_tokens, cfg.text_config.hidden_size) * (1 + 2 * llm_grad)
    return flops


# --- data ----------------------------------------------------------------------------------------

def synthetic_records(n: int, image_size: int, text_tokens: int, tokenizer, seed: int) -> list[dict]:
    """``n`` coco captioning records (RECORD_SCHEMA rows) whose prompt and answer are both longer than
    the processor keeps, so every encoded example has exactly ``text_tokens`` text positions."""
    import numpy as np
    from PIL import Image

    from ying.data.instructions import load_pool
    from ying.data.miniworld import lexicon_corpus
    from ying.data.schema import make_record_id, validate_record

    rng = random.Random(seed)
    words = sorted({w for line in lexicon_corpus() for w in line.split()})
    pool = load_pool("coco")
    pixels = np.random.default_rng(seed)

    def text_over(limit: int) -> str:
        """Lexicon words until the text is more than ``limit`` tokens long."""
        out: list[str] = []
        while len(tokenizer.encode(" ".join(out), add_special_tokens=False)) <= limit:
            out.extend(rng.choice(words) for _ in range(max(8, limit // 2)))
        return " ".join(out)

    records = []
    for i in range(n):
        # Blocks of colour plus noise: JPEG bytes of a realistic size, decoded like any photo.
        blocks = pixels.integers(0, 256, (8, 8, 3), dtype=np.uint8).repeat(image_size // 8 + 1, 0).repeat(image_size // 8 + 1, 1)
        noise = pixels.integers(-24, 24, (image_size, image_size, 3))
        image = np.clip(blocks[:image_size, :image_size].astype(int) + noise, 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=90)
        record = {
            "id": make_record_id("coco", "train", f"gpu-check-{i:05d}"),
            "task": "coco", "category": "captioning", "lang": "en", "split": "train",
            "images": [buf.getvalue()],
            "instruction": pool[i % len(pool)],
            "inputs": text_over(text_tokens),  # the prompt part, cut to its share by the processor
            "outputs": text_over(text_tokens // 2),  # the answer, cut to max_text_tokens // 2
            "meta": json.dumps({"source": "benchmarks/gpu_check.py synthetic"}),
        }
        problem = validate_record(record)
        if problem:
            raise ValueError(f"synthetic record {record['id']} is unusable: {problem}")
        records.append(record)
    return records


def write_records(data_dir: str, records: list[dict], files: int) -> None:
    """``<data_dir>/records/train/gpu-check-<k>.parquet``, RECORD_SCHEMA, split into ``files`` files
    (one Ray Data block each, so the ingest tasks share the work)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ying.data.records import split_dir
    from ying.data.schema import RECORD_SCHEMA

    out = Path(split_dir(data_dir, "train"))
    out.mkdir(parents=True, exist_ok=True)
    per_file = -(-len(records) // files)
    for k in range(0, len(records), per_file):
        table = pa.Table.from_pylist(records[k:k + per_file], schema=RECORD_SCHEMA)
        pq.write_table(table, out / f"gpu-check-{k // per_file:03d}.parquet", compression="zstd")


# --- the run -------------------------------------------------------------------------------------

def run_config(args, gpu: bool):
    """The paper preset, randomly initialised, one worker, at the widths of ``args``."""
    from ying.config import load_config

    paper = load_config("paper")
    zero_stage = paper.train.zero_stage if args.zero_stage is None else args.zero_stage
    overrides = [
        "model.blip2_path=null", "model.llm_path=null",  # random init: nothing to download
        "model.attn_implementation=sdpa",
        f"model.max_text_tokens={args.text_tokens}",
        "train.num_workers=1",
        "train.gradient_checkpointing=true",
        f"train.zero_stage={zero_stage}", f"train.zero_init={str(zero_stage == 3).lower()}",
        "train.max_failures=0",  # a benchmark fails loudly; the preset's -1 would retry forever
    ]
    if not args.address:  # the cluster it starts is this one machine: no node of it is drained
        overrides.append("train.preemption_watcher=false")
    if args.smoke:
        overrides += SMOKE_MODEL + [f"model.llm.num_layers={args.llm_layers}", "train.use_gpu=false",
                                    "train.cpus_per_worker=1", "train.torch_threads=1", "train.data_tasks=1",
                                    "train.data_task_cpus=1"]
    else:
        # The paper's worker takes 4 CPUs beside 2 ingest tasks of 1; a smaller host gives it what is left.
        cpus = os.cpu_count() or 1
        # LLaMA's 32,000 asked of the built-in BPE, which stops where its corpus runs out (~3.2k).
        overrides += [f"model.llm.num_layers={args.llm_layers}", "model.dtype=bfloat16",
                      "model.tokenizer={kind: bpe, vocab_size: 32000}", "train.use_gpu=true",
                      f"train.cpus_per_worker={max(1, min(4, cpus - 2))}"]
    return paper, load_config("paper", overrides=overrides)


def stage_shape(paper, stage: str, smoke: bool) -> tuple[int, int]:
    """(micro-batch, accumulation steps) of one of the paper's GPUs in ``stage``."""
    if smoke:
        return 2, 2
    spec = getattr(paper.train, stage)
    micro = spec.micro_batch_size
    return micro, spec.batch_size // (micro * paper.train.num_workers)


def train_stage(cfg, paper, stage: str, args, data_dir: str, workdir: Path, init_checkpoint: str | None) -> dict:
    """One stage through the product's planner and trainer; its summary plus the plan's batch shape."""
    from ying.train.stages import fit, stage_plan

    micro, accumulation = stage_shape(paper, stage, args.smoke)
    out_dir = str(workdir / stage / "hf")
    plan = stage_plan(cfg, stage, data_dir, out_dir, init_checkpoint=init_checkpoint, max_steps=args.steps,
                      warmup_steps=1, batch_size=micro * accumulation, micro_batch_size=micro,
                      log_every=args.log_every, val_examples=0, context="gpu_check")
    t0 = time.time()
    runs = workdir / stage / "ray_train"
    summary = fit(cfg, plan, str(runs), fresh=True)
    summary["wall_s"] = time.time() - t0
    shutil.rmtree(runs, ignore_errors=True)  # the resume checkpoint (optimizer state: 7 GiB at the default size)
    summary["micro_batch"], summary["accumulation"], summary["out_dir"] = micro, accumulation, out_dir
    return summary


def stage_figures(summary: dict, meta_model, expected_seq: int, answer_tokens: int, peak: float | None,
                  goal: float | None) -> dict:
    """tokens/s (first logging window left out), model FLOPs per token and MFU of one stage's summary."""
    logged = [h for h in summary["history"] if "tokens" in h]
    windows = logged[1:]
    if not windows:
        raise RuntimeError(f"{summary['plan']['stage']}: only one logging window; raise --steps or lower --log-every")
    window_s = [h["tokens"] / h["tokens_per_s"] for h in windows]
    seconds = sum(window_s)
    tokens = sum(h["tokens"] for h in windows)
    tokens_per_s = tokens / seconds
    examples = summary["step"] * summary["plan"]["batch_size"]
    seq = summary["tokens"] / examples
    if seq != expected_seq:  # the FLOPs count assumes every example has the same length (synthetic_records)
        raise RuntimeError(f"{summary['plan']['stage']}: the loop trained {summary['tokens']:,} tokens in {examples} "
                           f"examples ({seq:.2f} each) where every example has {expected_seq}")
    trainable = set(summary["trainable"])
    flops_per_token = model_flops_per_example(meta_model, trainable, expected_seq, answer_tokens) / expected_seq
    tflops = tokens_per_s * flops_per_token / 1e12
    peak_mem = summary.get("peak_gpu_mem_bytes")
    out = {
        "trainable_params": sum(p.numel() for n, p in meta_model.named_parameters() if n in trainable),
        "micro_batch": summary["micro_batch"],
        "accumulation": summary["accumulation"],
        "steps": summary["step"],
        "measured_steps": windows[-1]["step"] - logged[0]["step"],
        "tokens_trained": summary["tokens"],
        "tokens_per_s": round(tokens_per_s, 1),
        "samples_per_s": round(tokens_per_s / seq, 2),
        "model_flops_per_token": round(flops_per_token),
        "model_tflops_per_s": round(tflops, 2),
        "mfu": round(tflops / peak, 4) if peak else None,
        "peak_gpu_mem_gib": round(peak_mem / 2**30, 2) if peak_mem is not None else None,
        "min_window_s": round(min(window_s), 2),
        "loss": round(summary["loss"], 4),
        "wall_s": round(summary["wall_s"], 1),
    }
    if goal is not None:
        out["mfu_goal"] = goal
    return out


def generation_figures(checkpoint: str, records: list[dict], args, device: str) -> dict:
    """Batched greedy generation with the shared generator, from Stage II's checkpoint."""
    import torch

    from ying.model.checkpoint import load_checkpoint
    from ying.model.inference import generate_greedy

    t0 = time.time()
    model, tokenizer, processor, _ = load_checkpoint(checkpoint, device=device,
                                                     dtype="float32" if args.smoke else "bfloat16",
                                                     attn_implementation="sdpa")
    load_s = time.time() - t0
    # Captioning prompts as eval asks them (instruction and image; the records' long inputs left out).
    examples = [{"images": r["images"], "instruction": r["instruction"], "inputs": ""}
                for r in records[:args.gen_batch]]
    prompt_tokens = [len(processor.encode_prompt(e).input_ids) for e in examples]
    # min_new_tokens holds EOS back: every row makes exactly gen_tokens tokens, so the count is exact.
    generate_greedy(model, tokenizer, processor, examples, max_new_tokens=2, min_new_tokens=2)  # kernels, allocator
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    answers = generate_greedy(model, tokenizer, processor, examples, max_new_tokens=args.gen_tokens,
                              min_new_tokens=args.gen_tokens)
    seconds = time.time() - t0  # decoding the answers synchronised with the device
    if len(answers) != len(examples):
        raise RuntimeError(f"generate_greedy returned {len(answers)} answers for {len(examples)} prompts")
    return {
        "batch": len(examples),
        "prompt_tokens": max(prompt_tokens),
        "new_tokens": args.gen_tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(len(examples) * args.gen_tokens / seconds, 1),
        "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
        "load_s": round(load_s, 1),
    }


def process_env(gpu: bool) -> dict[str, str]:
    """Environment of this process and of every Ray worker (set before transformers and DeepSpeed load);
    Ray Train's settings join it once the run's config is known (``ying.train.controller_env``)."""
    from ying.console import worker_env

    env = {"DS_ACCELERATOR": "cuda" if gpu else "cpu", **worker_env(),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    os.environ.update(env)
    if not sys.stdout.isatty():  # Ray colours its "(pid=...)" prefixes even in a file or a CI log
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    return env


def start_ray(address: str | None, env: dict[str, str]) -> None:
    import ray

    from ying.console import filter_forwarded_logs, quiet_stage_process

    filter_forwarded_logs()
    quiet_stage_process()  # the driver plans Ray Data's reads: no progress bars
    if address:  # workers on the cluster's nodes get the environment through the runtime_env
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True)
    else:  # a cluster of our own, even when another Ray runs on this machine. Dashboard on: Ray
        # Train's placement-group cleaner asks the State API whether the controller is alive.
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=True, log_to_driver=True,
                 runtime_env={"env_vars": env})


def main() -> None:
    from ying.train import CONTROLLER_ENV

    poll_s = CONTROLLER_ENV["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llm-layers", type=int, default=None,
                   help="LLaMA-13B layers kept, of 40 (default 8: 3.7B parameters in all; ~22 GiB per GPU by `ying "
                        "plan-memory`'s arithmetic; both stages, their 7 GiB checkpoints and the generation sized to "
                        "finish in 5 minutes on one H100; --smoke: 2)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per stage (default 18; --smoke: 2)")
    p.add_argument("--log-every", type=int, default=None,
                   help="steps per logging window; the first window is left out of tokens/s. Each window is a "
                        f"report to Ray Train, whose controller collects one per worker every {poll_s} s: reports made "
                        "faster queue up (training goes on) and the stage ends when the last is collected "
                        "(default 6: ~3 s at the goal's speed; --smoke: 1)")
    p.add_argument("--text-tokens", type=int, default=None,
                   help="text positions per example, model.max_text_tokens (default 512, the paper's; --smoke: 24)")
    p.add_argument("--records", type=int, default=None,
                   help="synthetic training records (default: (steps + 1) x the larger batch, more than a stage reads, "
                        "so no epoch boundary falls inside the timing)")
    p.add_argument("--zero-stage", type=int, choices=(0, 1, 2, 3), default=None,
                   help="DeepSpeed ZeRO stage (default: the paper preset's, 3 with zero_init)")
    p.add_argument("--gen-batch", type=int, default=None, help="prompts generated together (default 8, serve.max_batch_size)")
    p.add_argument("--gen-tokens", type=int, default=None,
                   help="new tokens per prompt (default 128, eval.max_new_tokens; --smoke: 4)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the GPU's dense bf16 peak in TFLOP/s, for a GPU not in the built-in table (or to override it)")
    p.add_argument("--address", default=None,
                   help="a running Ray cluster to use, whose nodes see --workdir (default: start a local one)")
    p.add_argument("--workdir", default=None, help="where data, checkpoints and Ray Train runs go (default: a "
                                                   "temporary folder, removed at the end)")
    p.add_argument("--smoke", action="store_true",
                   help="the same path on the CPU at tiny widths, float32, a few steps: checks the script, measures nothing")
    args = p.parse_args()
    smoke_defaults = {"llm_layers": 2, "steps": 2, "log_every": 1, "text_tokens": 24, "records": None, "gen_batch": 2,
                      "gen_tokens": 4}
    gpu_defaults = {"llm_layers": 8, "steps": 18, "log_every": 6, "text_tokens": 512, "records": None, "gen_batch": 8,
                    "gen_tokens": 128}
    for key, value in (smoke_defaults if args.smoke else gpu_defaults).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.steps < 2 * args.log_every:
        p.error(f"--steps {args.steps} leaves no measured window after the first --log-every {args.log_every} steps; "
                f"give --steps {2 * args.log_every} or more")

    t_start = time.time()
    phases: dict[str, float] = {}
    env = process_env(gpu=not args.smoke)
    import torch

    if args.smoke:
        device, device_name = "cpu", "cpu (smoke: tiny widths, nothing measured)"
    else:
        if not torch.cuda.is_available():
            print("gpu_check: no CUDA GPU visible (torch.cuda.is_available() is False): run it on a machine with one "
                  "GPU, or give --smoke for the CPU check. Nothing was measured.", file=sys.stderr)
            raise SystemExit(2)
        device, device_name = "cuda", torch.cuda.get_device_name(0)
    peak, peak_source = peak_tflops(device_name, args.peak_tflops)
    if not args.smoke and peak is None:
        print(f"[gpu_check] {device_name!r} is not in the peak table: MFU is left out (give --peak-tflops)", flush=True)

    paper, cfg = run_config(args, gpu=not args.smoke)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        # --- data ---------------------------------------------------------------------------
        t0 = time.time()
        from ying.model.processor import YingProcessor
        from ying.model.tokenizer import build_tokenizer

        tokenizer = build_tokenizer(cfg.model.tokenizer)
        processor = YingProcessor.from_model_config(tokenizer, cfg.model)
        batches = [a * b for a, b in (stage_shape(paper, s, args.smoke) for s in ("stage1", "stage2"))]
        n_records = args.records or (args.steps + 1) * max(batches)
        records = synthetic_records(n_records, cfg.model.vision.image_size, args.text_tokens, tokenizer, cfg.run.seed)
        seq = len(processor.encode_train_arrays(records[0])["input_ids"])
        data_dir = str(workdir / "data")
        shutil.rmtree(data_dir, ignore_errors=True)
        write_records(data_dir, records, files=max(1, cfg.train.data_tasks) * 4)
        phases["data"] = time.time() - t0
        print(f"[gpu_check] data: {n_records} records ({cfg.model.vision.image_size} px, {seq} positions each) "
              f"in {phases['data']:.1f}s", flush=True)

        # --- Ray ----------------------------------------------------------------------------
        t0 = time.time()
        from ying.train import controller_env

        env.update(controller_env(cfg.train))  # Ray Train's settings, from the run's config
        os.environ.update(env)
        start_ray(args.address, env)
        phases["ray_start"] = time.time() - t0
        print(f"[gpu_check] ray: started in {phases['ray_start']:.1f}s", flush=True)

        # --- Stage I and Stage II -------------------------------------------------------------
        from ying.model.processor import answer_budget
        from ying.model.vlm import build_model

        meta_model = build_model(cfg.model, tokenizer, device="meta")  # shapes, for the FLOPs count
        summaries = {}
        init = None
        for stage in ("stage1", "stage2"):
            summaries[stage] = train_stage(cfg, paper, stage, args, data_dir, workdir, init)
            phases[stage] = summaries[stage]["wall_s"]
            init = summaries[stage]["out_dir"]
            print(f"[gpu_check] {stage}: {summaries[stage]['step']} steps, {summaries[stage]['tokens']:,} tokens in "
                  f"{phases[stage]:.1f}s", flush=True)
        # synthetic_records' answers are longer than the processor keeps: each is cut to its budget, no eos
        figures = {stage: stage_figures(summaries[stage], meta_model, seq, answer_budget(args.text_tokens), peak,
                                        MFU_GOAL_STAGE2 if stage == "stage2" else None)
                   for stage in summaries}
        for stage, f in figures.items():
            mfu = f"{f['mfu']:.3f}" if f["mfu"] is not None else "n/a"
            print(f"[gpu_check] {stage}: {f['tokens_per_s']:,.0f} tokens/s, {f['model_tflops_per_s']} model TFLOP/s, "
                  f"MFU {mfu}", flush=True)

        # --- generation -----------------------------------------------------------------------
        t0 = time.time()
        generation = generation_figures(init, records, args, device)
        phases["generation"] = time.time() - t0
        print(f"[gpu_check] generation: {generation['tokens_per_s']:,.0f} tokens/s ({generation['batch']} x "
              f"{generation['new_tokens']} tokens) in {phases['generation']:.1f}s", flush=True)
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    phases["total"] = time.time() - t_start

    peaks = [f["peak_gpu_mem_gib"] for f in figures.values() if f["peak_gpu_mem_gib"] is not None]
    result = {
        "path": PATH,
        "device": device_name,
        "smoke": args.smoke,
        "peak_bf16_tflops": peak,
        "peak_source": peak_source,
        "model": {
            "preset": "paper",
            "vision": f"{cfg.model.vision.hidden_size}x{cfg.model.vision.num_layers}",
            "qformer": f"{cfg.model.qformer.hidden_size}x{cfg.model.qformer.num_layers}",
            "llm": f"{cfg.model.llm.hidden_size}x{cfg.model.llm.num_layers} ({cfg.model.llm.num_heads} heads, "
                   f"{cfg.model.llm.intermediate_size} MLP)",
            "llm_layers": cfg.model.llm.num_layers,
            "vocab": len(tokenizer),
            "params": sum(p.numel() for p in meta_model.parameters()),
            "dtype": cfg.model.dtype,
            "attn": cfg.model.attn_implementation,
            "gradient_checkpointing": cfg.train.gradient_checkpointing,
            "zero_stage": cfg.train.zero_stage,
            "zero_init": cfg.train.zero_init,
        },
        "seq_tokens": seq,
        "stage1": figures["stage1"],
        "stage2": figures["stage2"],
        "peak_gpu_mem_gib": max(peaks) if peaks else None,
        "generation": generation,
        "phases_s": {k: round(v, 1) for k, v in phases.items()},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
