"""One-GPU check of the paper model's training step: tokens/s and model FLOPs utilisation (MFU).

    python benchmarks/gpu_check.py                 # on a machine with one GPU; under 5 minutes
    python benchmarks/gpu_check.py --llm-layers 8  # more of the 13B LLM's 40 layers

The model has the paper preset's real widths: BLIP-2's ViT-g (39 layers, 1408 wide) and Q-Former
(12 layers, 768 wide, 32 query tokens), and a LLaMA-13B-shaped LLM (5120 wide, 40 heads, 13824
MLP, Ziya's 39,410-token vocabulary) cut to ``--llm-layers`` layers; random weights, bf16, sdpa
attention, gradient checkpointing of the LLM, the paper's Stage I and Stage II trainable sets, AdamW.
Sequences are one image (32 query tokens) + ``--text-tokens`` text tokens.

MFU = model FLOPs per second / the GPU's dense bf16 peak. Model FLOPs per step count what the
step must compute, not the recomputation of checkpointing: 2 x parameters per token for each
forward matmul, 2 x more in backward wherever a gradient must flow (through the LLM in both
stages, since the trainable Q-Former sits before it), and 2 x more for the weight gradients of
trainable matrices; attention adds 4 x seq x width per layer per token in forward (QK^T and AV).
The frozen vision tower only runs forward. Without a GPU the script exits at once; ``--smoke``
runs the same code on the CPU at tiny widths (for tests).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

# Dense bf16 peak TFLOPS by device name (NVIDIA data sheets; SXM parts).
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0}


def peak_tflops(device_name: str, override: float | None) -> float | None:
    if override:
        return override
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in device_name:
            return value
    return None


def build(args, device, dtype):
    import torch
    from transformers import Blip2Config, Blip2ForConditionalGeneration, LlamaConfig

    if args.smoke:
        vision = dict(image_size=32, patch_size=16, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=128)
        qformer = dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128,
                       encoder_hidden_size=64, cross_attention_frequency=2)
        text = LlamaConfig(hidden_size=64, num_hidden_layers=args.llm_layers, num_attention_heads=2,
                           intermediate_size=128, vocab_size=512)
        queries = 4
    else:
        vision = dict(image_size=224, patch_size=14, hidden_size=1408, num_hidden_layers=39, num_attention_heads=16,
                      intermediate_size=6144)
        qformer = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                       encoder_hidden_size=1408, cross_attention_frequency=2)
        text = LlamaConfig(hidden_size=5120, num_hidden_layers=args.llm_layers, num_attention_heads=40,
                           intermediate_size=13824, vocab_size=39_412, max_position_embeddings=2048)
        queries = 32
    text._attn_implementation = "sdpa"
    config = Blip2Config(vision_config=vision, qformer_config=qformer, text_config=text.to_dict(),
                         num_query_tokens=queries, image_token_id=text.vocab_size - 1)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Blip2ForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    model.language_model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model.train(), config


def model_flops_per_step(model, config, trainable: set[str], batch: int, text_tokens: int) -> float:
    """Forward + required backward FLOPs of one step (see the module docstring)."""
    seq = config.num_query_tokens + text_tokens
    vision_tokens = (config.vision_config.image_size // config.vision_config.patch_size) ** 2 + 1
    flops = 0.0
    for name, p in model.named_parameters():
        if p.ndim < 2:
            continue
        n = p.numel()
        if name.startswith("vision_model."):
            flops += 2 * n * vision_tokens * batch  # frozen and first: forward only
        elif name.startswith(("qformer.", "language_projection", "query_tokens")):
            tokens = config.num_query_tokens * batch
            flops += 2 * n * tokens * (3 if name in trainable else 2)
        elif "embed_tokens" in name:
            continue  # a lookup, not a matmul
        else:  # the LLM: forward, activation gradients (to reach the Q-Former), weight gradients if trainable
            flops += 2 * n * seq * batch * (3 if name in trainable else 2)
    text = config.text_config
    attention = 4 * seq * text.hidden_size * text.num_hidden_layers * seq * batch  # QK^T and AV, forward
    return flops + attention * 2  # attention's backward reaches the Q-Former in both stages


def run_stage(model, config, patterns, args, device, dtype) -> dict:
    import fnmatch

    import torch

    trainable = set()
    for name, p in model.named_parameters():
        p.requires_grad = any(fnmatch.fnmatchcase(name, pat) for pat in patterns)
        if p.requires_grad:
            trainable.add(name)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    size = config.vision_config.image_size
    pixels = torch.randn(args.batch, 3, size, size, device=device, dtype=dtype)
    ids = torch.randint(0, config.text_config.vocab_size - 2, (args.batch, config.num_query_tokens + args.text_tokens),
                        device=device)
    ids[:, : config.num_query_tokens] = config.image_token_id

    def step():
        out = model(pixel_values=pixels, input_ids=ids, labels=ids)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.time() - t0) / args.steps
    flops = model_flops_per_step(model, config, trainable, args.batch, args.text_tokens)
    del opt
    return {
        "trainable_params": sum(p.numel() for n, p in model.named_parameters() if n in trainable),
        "step_seconds": round(seconds, 4),
        "tokens_per_s": round(args.batch * (config.num_query_tokens + args.text_tokens) / seconds, 1),
        "model_tflops_per_s": round(flops / seconds / 1e12, 2),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
    }


STAGE_PATTERNS = {
    "stage1": ["qformer.*", "query_tokens", "language_projection.*"],
    "stage2": ["qformer.*", "query_tokens", "language_projection.*",
               "language_model.model.layers.*.self_attn.q_proj.*", "language_model.model.layers.*.self_attn.v_proj.*"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llm-layers", type=int, default=4, help="LLaMA-13B layers kept (of 40; default 4)")
    p.add_argument("--batch", type=int, default=4, help="examples per step (default 4, the paper preset's Stage II micro-batch)")
    p.add_argument("--text-tokens", type=int, default=512, help="text tokens per example (default 512, max_text_tokens)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, if not in the built-in table")
    p.add_argument("--smoke", action="store_true", help="tiny widths on the CPU: checks the script, measures nothing")
    args = p.parse_args()

    import torch

    if args.smoke:
        device, dtype, name = torch.device("cpu"), torch.float32, "cpu (smoke)"
        args.warmup, args.steps, args.text_tokens = 1, 1, 8
    else:
        if not torch.cuda.is_available():
            print("gpu_check: no CUDA GPU visible (torch.cuda.is_available() is False); run it on a machine with "
                  "one GPU. Nothing was measured.", file=sys.stderr)
            raise SystemExit(2)
        device, dtype, name = torch.device("cuda", 0), torch.bfloat16, torch.cuda.get_device_name(0)
    model, config = build(args, device, dtype)
    peak = peak_tflops(name, args.peak_tflops)
    result = {"device": name, "llm_layers": args.llm_layers, "batch": args.batch,
              "seq_tokens": config.num_query_tokens + args.text_tokens, "peak_bf16_tflops": peak}
    for stage, patterns in STAGE_PATTERNS.items():
        r = run_stage(model, config, patterns, args, device, dtype)
        r["mfu"] = round(r["model_tflops_per_s"] / peak, 3) if peak else None
        result[stage] = r
        print(f"[gpu_check] {stage}: {r}", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
