"""How much memory a preset needs per GPU and per node, from the meta-device model's parameter counts.

``ying plan-memory --preset paper`` prints, for Stage I and Stage II, ZeRO-2 and ZeRO-3, on 40 GB
and 80 GB GPUs: the estimated peak per GPU (and whether it fits) and the host memory per 8-GPU node.
Nothing is allocated: the model is built on the meta device, so the 14B-parameter paper model is
counted on a laptop.

The estimate, per GPU (W data-parallel ranks, N parameters in total, T of them trainable; 16-bit
weights, fp32 Adam; see Rajbhandari et al. 2020 for the ZeRO arithmetic):
    weights        2 N (ZeRO-2: every rank holds them) | 2 N / W + the live gathered set (ZeRO-3)
    gradients      2 T / W + DeepSpeed's reduce buckets
    optimizer      12 T / W (fp32 master copy, Adam m and v)
    activations    the LLM's, for backward to reach the projection and Q-Former in both stages:
                   with gradient checkpointing 2 s b h per layer + one layer's working set
                   s b h (34 + 5 a s / h) (Korthikanti et al. 2022); without, the latter per layer
    logits         a b V in 16 bit, and again in fp32 for the loss, over the a positions that predict
                   an answer token (the only ones the LM head runs at: ying.model.vlm.answer_loss),
                   at most ``answer_budget(max_text_tokens)`` (where YingProcessor cuts an answer)
    overhead       CUDA context, NCCL and allocator slack
The vision tower is frozen in both stages, so it keeps no activations for backward.

Inference (``plan_inference_memory``: the eval stage's model actors and Serve's model replicas),
per GPU, in the dtype the model runs in there (``ying.model.checkpoint.inference_dtype``: the
config's ``model.dtype``, bfloat16 for the paper preset; b bytes per value):
    weights        b N for every model a GPU holds (Serve: ``serve.max_models_per_replica``)
    kv_cache       2 L h s B b: keys and values of every LLM layer for B sequences of s tokens, where
                   B is ``eval.batch_size`` / ``serve.max_batch_size`` and s the longest sequence the
                   job can reach: its most images x query tokens + BOS + ``model.max_text_tokens`` +
                   its most new tokens, at most the LLM's ``max_position_embeddings``
    activations    the prefill's largest working set: one LLM layer over the whole batch (hidden
                   states, MLP, and the attention scores as if materialised) or one vision-tower
                   layer over all the batch's images, whichever is larger, plus the last position's
                   logits in fp32
    overhead       CUDA context, cuBLAS workspace and allocator slack (no NCCL: one GPU per model)
Host memory per node: each rank's process (torch, CUDA, Ray), its shuffle buffer and prefetched
batches, and on rank 0 the 16-bit state dict gathered for the final checkpoint. Weights load from
memory-mapped safetensors straight to the GPU (``ying.model.weights``): the page cache holds the
files once per node and can be reclaimed.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MemoryEstimate", "InferenceEstimate", "plan_memory", "plan_inference_memory", "format_plan", "GIB"]

GIB = 1024**3
_OVERHEAD_GPU = 3.0 * GIB  # CUDA context + NCCL + allocator fragmentation
_BUCKETS = 2 * 5e8 * 2  # DeepSpeed's default reduce + allgather buckets, 5e8 elements each, 16 bit
_ZERO3_LIVE = 1e9 * 2  # stage3_max_live_parameters (1e9 elements) gathered at once, 16 bit
_PROCESS_HOST = 6.0 * GIB  # one training process: torch + CUDA host state + Ray worker
_GPUS_PER_NODE = 8
_OVERHEAD_INFERENCE = 2.0 * GIB  # CUDA context + cuBLAS workspace + allocator slack; one process, no NCCL


@dataclass
class MemoryEstimate:
    stage: str
    zero_stage: int
    gpu_gib: float
    total_params: int
    trainable_params: int
    per_gpu_gib: float
    host_per_node_gib: float
    parts: dict

    @property
    def fits(self) -> bool:
        # A "40 GB" GPU has 40e9 bytes (37.3 GiB); keep 5% headroom for allocator peaks.
        return self.per_gpu_gib <= self.gpu_gib * 1e9 / GIB * 0.95


def _counts(cfg, stage: str) -> tuple[int, int]:
    from ying.model.tokenizer import IMAGE_TOKEN
    from ying.model.vlm import apply_freeze_policy, build_model

    class _ShapeTokenizer:  # enough of a tokenizer for the model's sizes; nothing is downloaded
        def __init__(self, vocab):
            self.vocab = vocab
            self.pad_token_id, self.bos_token_id, self.eos_token_id = 0, 1, 2

        def __len__(self):
            return self.vocab

        def convert_tokens_to_ids(self, token):
            assert token == IMAGE_TOKEN
            return self.vocab - 1

    model = build_model(cfg.model.model_copy(update={"llm_path": None, "blip2_path": None}),
                        _ShapeTokenizer(_vocab_size(cfg)), device="meta")
    apply_freeze_policy(model, getattr(cfg.train, stage).trainable)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def _vocab_size(cfg) -> int:
    # Ziya-13B: LLaMA's 32,000 + 8,000 Chinese characters, deduplicated to 39,410; plus <image> and <pad>.
    return 39_410 + 2 if cfg.model.tokenizer.kind == "pretrained" else cfg.model.tokenizer.vocab_size + 5


def plan_memory(cfg, gpu_sizes_gib=(40, 80), zero_stages=(2, 3), gradient_checkpointing: bool | None = None
                ) -> list[MemoryEstimate]:
    from ying.model.processor import answer_budget

    llm, world = cfg.model.llm, max(cfg.train.num_workers, 1)
    checkpointing = cfg.train.gradient_checkpointing if gradient_checkpointing is None else gradient_checkpointing
    vocab = _vocab_size(cfg)
    out = []
    for stage in ("stage1", "stage2"):
        spec = getattr(cfg.train, stage)
        micro = spec.micro_batch_size or spec.batch_size // world
        seq = cfg.model.num_query_tokens + cfg.model.max_text_tokens  # one image + the text budget
        total, trainable = _counts(cfg, stage)
        layer_working = seq * micro * llm.hidden_size * (34 + 5 * llm.num_heads * seq / llm.hidden_size)
        if checkpointing:
            activations = llm.num_layers * 2 * seq * micro * llm.hidden_size + layer_working
        else:
            activations = llm.num_layers * layer_working
        logits = answer_budget(cfg.model.max_text_tokens) * micro * vocab * (2 + 4)  # answer positions only
        for zero in zero_stages:
            weights = 2 * total if zero < 3 else 2 * total / world + _ZERO3_LIVE
            parts = {
                "weights": weights,
                "gradients": 2 * trainable / world + _BUCKETS,
                "optimizer": 12 * trainable / world,
                "activations": activations,
                "logits": logits,
                "overhead": _OVERHEAD_GPU,
            }
            per_gpu = sum(parts.values())
            shuffle = cfg.train.shuffle_buffer * 3 * cfg.model.vision.image_size**2  # uint8 pixels per buffered row
            host = _GPUS_PER_NODE * (_PROCESS_HOST + shuffle) + 2 * total  # + rank 0's gathered final state dict
            for gpu in gpu_sizes_gib:
                out.append(MemoryEstimate(stage, zero, gpu, total, trainable, per_gpu / GIB, host / GIB,
                                          {k: v / GIB for k, v in parts.items()}))
    return out


@dataclass
class InferenceEstimate:
    job: str  # "eval" (one model actor) or "serve" (one model replica)
    gpu_gib: float
    total_params: int
    dtype: str
    batch_size: int
    seq_len: int
    models: int  # models one GPU holds at once
    per_gpu_gib: float
    parts: dict

    @property
    def fits(self) -> bool:
        return self.per_gpu_gib <= self.gpu_gib * 1e9 / GIB * 0.95  # as MemoryEstimate.fits


def plan_inference_memory(cfg, gpu_sizes_gib=(40, 80)) -> list[InferenceEstimate]:
    """Per-GPU memory of an eval model actor and of a Serve model replica (module docstring)."""
    from ying.model.checkpoint import inference_dtype

    m, llm, v = cfg.model, cfg.model.llm, cfg.model.vision
    dtype = inference_dtype("cuda", m.dtype)
    b = 4 if dtype == "float32" else 2
    total, _ = _counts(cfg, "stage1")  # the whole model; which parts train does not matter here
    vision_tokens = (v.image_size // v.patch_size) ** 2 + 1  # patches + CLS
    jobs = {
        # An eval example has one image or a video's frames; answers are short, captions longer.
        "eval": (cfg.eval.batch_size, max(1, cfg.data.frames_per_video),
                 max(cfg.eval.max_new_tokens, cfg.eval.caption_max_new_tokens), 1),
        "serve": (cfg.serve.max_batch_size, cfg.serve.max_images, cfg.serve.max_tokens,
                  cfg.serve.max_models_per_replica),
    }
    out = []
    for job, (batch, images, new_tokens, models) in jobs.items():
        seq = min(llm.max_position_embeddings, images * m.num_query_tokens + 1 + m.max_text_tokens + new_tokens)
        llm_layer = b * (batch * seq * (4 * llm.hidden_size + 3 * llm.intermediate_size)
                         + batch * llm.num_heads * seq * seq)
        n_images = batch * images
        vision_layer = b * (n_images * vision_tokens * (4 * v.hidden_size + 2 * v.intermediate_size)
                            + n_images * v.num_heads * vision_tokens**2)
        parts = {
            "weights": models * b * total,
            "kv_cache": 2 * llm.num_layers * llm.hidden_size * seq * batch * b,
            "activations": max(llm_layer, vision_layer) + 2 * 4 * batch * _vocab_size(cfg),
            "overhead": _OVERHEAD_INFERENCE,
        }
        per_gpu = sum(parts.values())
        for gpu in gpu_sizes_gib:
            out.append(InferenceEstimate(job, gpu, total, dtype, batch, seq, models, per_gpu / GIB,
                                         {k: val / GIB for k, val in parts.items()}))
    return out


def format_plan(estimates: list[MemoryEstimate], preset: str,
                inference: list[InferenceEstimate] | None = None) -> str:
    head = estimates[0]
    lines = [
        f"Memory plan for preset {preset!r}: {head.total_params / 1e9:.2f}B parameters "
        f"(counted on the meta device); 16-bit weights, fp32 Adam; estimates, not measurements. "
        "'fits' keeps 5% of the GPU free.",
        "",
        "| stage | trainable | ZeRO | GPU | per GPU (GiB) | fits | host per 8-GPU node (GiB) |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for e in estimates:
        lines.append(f"| {e.stage} | {e.trainable_params / 1e6:,.0f}M | {e.zero_stage} | {e.gpu_gib} GB | "
                     f"{e.per_gpu_gib:.1f} | {'yes' if e.fits else 'no'} | {e.host_per_node_gib:.0f} |")
    lines += ["", "Per-GPU parts (GiB): " + "; ".join(
        f"{e.stage} ZeRO-{e.zero_stage}: " + ", ".join(f"{k} {v:.1f}" for k, v in e.parts.items())
        for e in estimates if e.gpu_gib == estimates[0].gpu_gib)]
    if inference:
        lines += [
            "",
            "Inference, one GPU per model (eval: an eval.use_gpu model actor; serve: a model replica), "
            f"weights in {inference[0].dtype}:",
            "",
            "| job | batch | max seq | models | GPU | per GPU (GiB) | fits |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for e in inference:
            lines.append(f"| {e.job} | {e.batch_size} | {e.seq_len} | {e.models} | {e.gpu_gib} GB | "
                         f"{e.per_gpu_gib:.1f} | {'yes' if e.fits else 'no'} |")
        lines += ["", "Per-GPU parts (GiB): " + "; ".join(
            f"{e.job}: " + ", ".join(f"{k} {v:.1f}" for k, v in e.parts.items())
            for e in inference if e.gpu_gib == inference[0].gpu_gib)]
    return "\n".join(lines)
