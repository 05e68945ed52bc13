"""Greedy generation for records, shared by evaluation, the ablations, Serve and the GPU check
(paper §3.1.2: greedy decoding).

``generate_greedy`` is the one generator: it builds the prompts with the model's processor, pads
left (answers start together), moves the batch onto the model's device and the pixels into its
dtype, and decodes the new tokens. Callers that need more (Serve's per-row limits, stop strings and
streaming) pass their own stopping criteria and logits processors through ``generate_kwargs``.
"""

from __future__ import annotations

import torch

from ying.model.checkpoint import load_checkpoint

__all__ = ["YingPredictor", "generate_greedy", "model_inputs"]


def model_inputs(batch: dict[str, torch.Tensor], model) -> dict[str, torch.Tensor]:
    """``pixel_values``/``input_ids``/``attention_mask`` of a collated batch on the model's device;
    pixels in the weights' dtype (bfloat16 on a GPU), token ids stay integers."""
    param = next(model.parameters())
    return {"pixel_values": batch["pixel_values"].to(device=param.device, dtype=param.dtype),
            "input_ids": batch["input_ids"].to(param.device),
            "attention_mask": batch["attention_mask"].to(param.device)}


@torch.inference_mode()
def generate_greedy(model, tokenizer, processor, examples: list[dict], *, max_new_tokens: int,
                    chinese_dialogue: bool = False, **generate_kwargs) -> list[str]:
    """Answers (stripped) to ``examples`` (``{images: [bytes], instruction, inputs}``), in order, one batch."""
    if not examples:
        return []
    batch = processor.collate([processor.encode_prompt(e, chinese_dialogue) for e in examples], pad_left=True)
    inputs = model_inputs(batch, model)
    kwargs = {"do_sample": False, "num_beams": 1, "eos_token_id": tokenizer.eos_token_id,
              "pad_token_id": tokenizer.pad_token_id, **generate_kwargs}
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, **kwargs)
    new_tokens = out[:, inputs["input_ids"].shape[1]:]  # (B, new): the prompt is returned too
    return [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


class YingPredictor:
    """``generate([{images: [bytes], instruction, inputs}]) -> [answer]``."""

    def __init__(self, model, tokenizer, processor, name: str = "ying-vlm", max_new_tokens: int = 32):
        self.model = model
        self.tokenizer = tokenizer
        self.processor = processor
        self.name = name
        self.max_new_tokens = max_new_tokens

    @classmethod
    def from_checkpoint(cls, path: str, name: str | None = None, max_new_tokens: int = 32) -> "YingPredictor":
        model, tokenizer, processor, meta = load_checkpoint(path)
        return cls(model, tokenizer, processor, name or meta.get("name", "ying-vlm"), max_new_tokens)

    def generate(self, examples: list[dict], chinese_dialogue: bool = False,
                 max_new_tokens: int | None = None) -> list[str]:
        return generate_greedy(self.model, self.tokenizer, self.processor, examples,
                               max_new_tokens=max_new_tokens or self.max_new_tokens, chinese_dialogue=chinese_dialogue)
