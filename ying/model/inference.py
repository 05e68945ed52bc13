"""Greedy generation for records, shared by evaluation, the ablations, Serve and the GPU check
(paper §3.1.2: greedy decoding).

``generate_greedy`` is the one generator: it builds the prompts with the model's processor, pads
left (answers start together), moves the batch onto the model's device and the pixels into its
dtype, and decodes the new tokens. ``generate_tokens`` is the same from prompts already encoded,
returning the new token ids: Serve encodes each request on its own (a bad image fails that request
only) and reads its answers from its own stopping criteria (per-row limits, stop strings,
streaming), passed through ``generate_kwargs`` with its per-row sampling logits processor.
"""

from __future__ import annotations

import torch

from ying.model.checkpoint import load_checkpoint

__all__ = ["YingPredictor", "generate_greedy", "generate_tokens", "model_inputs"]


def model_inputs(batch: dict[str, torch.Tensor], model) -> dict[str, torch.Tensor]:
    """``pixel_values``/``input_ids``/``attention_mask`` of a collated batch on the model's device;
    pixels in the weights' dtype (bfloat16 on a GPU), token ids stay integers."""
    param = next(model.parameters())
    return {"pixel_values": batch["pixel_values"].to(device=param.device, dtype=param.dtype),
            "input_ids": batch["input_ids"].to(param.device),
            "attention_mask": batch["attention_mask"].to(param.device)}


@torch.inference_mode()
def generate_tokens(model, tokenizer, processor, prompts: list, *, max_new_tokens: int,
                    **generate_kwargs) -> torch.Tensor:
    """The new token ids (B, new) for ``prompts`` (``processor.encode_prompt`` outputs), one batch.

    Greedy unless ``generate_kwargs`` says otherwise; they override the defaults and may add
    ``stopping_criteria`` / ``logits_processor``. Rows that end early are padded after their EOS.
    """
    batch = processor.collate(prompts, pad_left=True)
    inputs = model_inputs(batch, model)
    kwargs = {"do_sample": False, "num_beams": 1, "eos_token_id": tokenizer.eos_token_id,
              "pad_token_id": tokenizer.pad_token_id, **generate_kwargs}
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, **kwargs)
    return out[:, inputs["input_ids"].shape[1]:]  # (B, new): the prompt is returned too


def generate_greedy(model, tokenizer, processor, examples: list[dict], *, max_new_tokens: int,
                    chinese_dialogue: bool = False, **generate_kwargs) -> list[str]:
    """Answers (stripped) to ``examples`` (``{images: [bytes], instruction, inputs}``), in order, one batch."""
    if not examples:
        return []
    prompts = [processor.encode_prompt(e, chinese_dialogue) for e in examples]
    new_tokens = generate_tokens(model, tokenizer, processor, prompts, max_new_tokens=max_new_tokens,
                                 **generate_kwargs)
    return [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


class YingPredictor:
    """``generate([{images: [bytes], instruction, inputs}]) -> [answer]`` for a Ying checkpoint on any device."""

    def __init__(self, model, tokenizer, processor, name: str = "ying-vlm", max_new_tokens: int = 32):
        self.model = model
        self.tokenizer = tokenizer
        self.processor = processor
        self.name = name
        self.max_new_tokens = max_new_tokens

    @classmethod
    def from_checkpoint(cls, path: str, name: str | None = None, max_new_tokens: int = 32, device: str = "cpu",
                        dtype: str | torch.dtype | None = None) -> "YingPredictor":
        """``dtype`` None: the checkpoint's ``model.dtype`` on a GPU, float32 on the CPU (``inference_dtype``)."""
        model, tokenizer, processor, meta = load_checkpoint(path, dtype=dtype, device=device)
        return cls(model, tokenizer, processor, name or meta.get("name", "ying-vlm"), max_new_tokens)

    def generate(self, examples: list[dict], chinese_dialogue: bool = False,
                 max_new_tokens: int | None = None) -> list[str]:
        return generate_greedy(self.model, self.tokenizer, self.processor, examples,
                               max_new_tokens=max_new_tokens or self.max_new_tokens, chinese_dialogue=chinese_dialogue)
