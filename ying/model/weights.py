"""Pretrained weights into Ying-VLM at the paper's scale, and the checks that keep a run from
silently training a broken model.

Memory: the 13B LLM is never built at random in fp32 and then overwritten. The composite model is
built on the meta device (shapes only); the BLIP-2 parts and the LLM are loaded by transformers'
own ``from_pretrained`` straight into the configured dtype and onto the worker's device
(safetensors are memory-mapped, so host memory holds one tensor at a time), and their modules are
put into the composite. Only the new parts (the language projection, the embedding rows of the
added ``<image>``/pad tokens) are initialised. Under ZeRO-3 with ``deepspeed.zero.Init`` active,
``from_pretrained`` loads partition by partition and no rank ever holds the whole model.

Checks:
- ``delta_weights_problem``: Hub ids known to hold *delta* weights (they must be added to the
  original LLaMA first) are refused at config time: loaded as a LLaMA they give a broken LLM and
  no error.
- ``llm_sanity``: after loading, the LLM's perplexity on a few fixed English and Chinese sentences;
  a warning names the path when it is far above what any trained LLM gives.
"""

from __future__ import annotations

from ying.config import KNOWN_DELTA_WEIGHTS, delta_weights_problem  # noqa: F401  (validated with the config)

import contextlib
import math
import warnings
from typing import Iterator

__all__ = [
    "KNOWN_DELTA_WEIGHTS",
    "delta_weights_problem",
    "torch_dtype",
    "resolve_attn_implementation",
    "default_dtype",
    "SANITY_SENTENCES",
    "llm_perplexity",
    "llm_sanity",
    "PERPLEXITY_WARN_ABOVE",
]

def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def resolve_attn_implementation(requested: str, on_gpu: bool) -> str:
    """``auto``: flash-attention-2 where it can run (flash_attn installed, CUDA), else PyTorch's sdpa."""
    if requested != "auto":
        if requested == "flash_attention_2" and not on_gpu:
            raise ValueError("model.attn_implementation=flash_attention_2 needs GPUs (train.use_gpu=true); "
                             "use sdpa or auto on CPUs")
        return requested
    if on_gpu:
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


@contextlib.contextmanager
def default_dtype(dtype) -> Iterator[None]:
    """Modules built inside get parameters of ``dtype`` from the start (no fp32 copy first)."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


# Plain sentences any pretrained bilingual LLM finds predictable; a broken one (delta weights
# loaded as a model, a wrong checkpoint) is as surprised as a random model.
SANITY_SENTENCES = (
    "The capital of France is Paris, and the capital of Germany is Berlin.",
    "A man is riding a bicycle down the street on a sunny day.",
    "One, two, three, four, five, six, seven, eight, nine, ten.",
    "中国的首都是北京。",
    "今天天气很好，我们去公园散步吧。",
)
# A trained LLaMA-13B scores roughly 3-30 on these; uniform guessing over a 32k vocabulary is ~32,000.
PERPLEXITY_WARN_ABOVE = 500.0


def llm_perplexity(language_model, tokenizer, sentences=SANITY_SENTENCES) -> float:
    """Token-level perplexity of the causal LM over ``sentences`` (each scored on its own)."""
    import torch

    device = next(language_model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    was_training = language_model.training
    language_model.eval()
    with torch.no_grad():
        for text in sentences:
            ids = tokenizer(text, return_tensors="pt").input_ids.to(device)
            if ids.shape[1] < 2:
                continue
            out = language_model(input_ids=ids, labels=ids)
            n = ids.shape[1] - 1
            total_nll += float(out.loss) * n
            total_tokens += n
    language_model.train(was_training)
    return math.exp(total_nll / max(total_tokens, 1))


def llm_sanity(language_model, tokenizer, llm_path: str, limit: float = PERPLEXITY_WARN_ABOVE,
               warn: bool = True) -> float:
    """Perplexity on ``SANITY_SENTENCES``; warns (once, naming the path) when it is above ``limit``.

    ``warn``: whether this process warns (every rank computes it, one rank speaks)."""
    ppl = llm_perplexity(language_model, tokenizer)
    if warn and (not math.isfinite(ppl) or ppl > limit):
        warnings.warn(
            f"the LLM loaded from {llm_path} has perplexity {ppl:,.0f} on plain English and Chinese sentences "
            f"(a trained LLM scores well under {limit:,.0f}): it is probably broken (delta weights not merged, "
            "a wrong or truncated checkpoint, a tokenizer that does not belong to it). Check model.llm_path and "
            "model.tokenizer.path before training on it.",
            RuntimeWarning,
            stacklevel=2,
        )
    return ppl
