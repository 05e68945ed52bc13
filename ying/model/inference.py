"""Greedy generation for records, shared by evaluation and Serve (paper §3.1.2: greedy decoding)."""

from __future__ import annotations

import torch

from ying.model.checkpoint import load_checkpoint

__all__ = ["YingPredictor"]


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

    @torch.inference_mode()
    def generate(self, examples: list[dict], chinese_dialogue: bool = False,
                 max_new_tokens: int | None = None) -> list[str]:
        if not examples:
            return []
        batch = self.processor.collate(
            [self.processor.encode_prompt(e, chinese_dialogue) for e in examples], pad_left=True
        )
        out = self.model.generate(
            pixel_values=batch["pixel_values"],
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            max_new_tokens=max_new_tokens or self.max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        new_tokens = out[:, batch["input_ids"].shape[1]:]
        return [t.strip() for t in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
