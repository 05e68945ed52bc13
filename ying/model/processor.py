"""Records to tensors: image preprocessing, prompt + answer token ids, the label mask, collation.

Sequence layout for one example with ``n`` images (a video is ``n`` frames)::

    [<image> x (n * num_query_tokens)] [prompt tokens] [answer tokens] [</s>]
     labels: -100 ...................   -100 ......... answer ids ...... eos

Loss is on the answer tokens (and the closing eos) only: the model is never taught to predict
its instruction or the image placeholders.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from ying.model.prompt import format_prompt
from ying.model.tokenizer import IMAGE_TOKEN

__all__ = ["IGNORE_INDEX", "YingProcessor", "Example"]

IGNORE_INDEX = -100


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    pixel_values: torch.Tensor  # (n_images, 3, H, W)


class YingProcessor:
    """Turns records into model inputs. Plain Python: testable without Ray or a model."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, image_size: int, num_query_tokens: int,
                 max_text_tokens: int):
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.num_query_tokens = num_query_tokens
        self.max_text_tokens = max_text_tokens
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self._mean = np.array(OPENAI_CLIP_MEAN, dtype=np.float32).reshape(3, 1, 1)
        self._std = np.array(OPENAI_CLIP_STD, dtype=np.float32).reshape(3, 1, 1)

    # --- images -------------------------------------------------------------------------------
    def pixel_values(self, images: list[bytes]) -> torch.Tensor:
        """(n_images, 3, H, W), resized and normalised as BLIP-2's image processor does."""
        arrays = []
        for blob in images:
            with Image.open(io.BytesIO(blob)) as im:
                im = im.convert("RGB").resize((self.image_size, self.image_size), Image.BICUBIC)
                arr = np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255.0
            arrays.append((arr - self._mean) / self._std)
        return torch.from_numpy(np.stack(arrays))

    # --- text ---------------------------------------------------------------------------------
    def _prompt_ids(self, instruction: str, inputs: str, chinese_dialogue: bool, budget: int) -> list[int]:
        ids = self.tokenizer.encode(format_prompt(instruction, inputs, chinese_dialogue), add_special_tokens=False)
        if len(ids) > budget:
            # Keep the start (instruction) and the "<bot>:" tail that cues the answer; cut the middle.
            tail = self.tokenizer.encode("\n<bot>:\n", add_special_tokens=False)
            ids = ids[: max(budget - len(tail), 1)] + tail
        return ids

    def encode_train(self, record: dict) -> Example:
        n_images = len(record["images"])
        answer = self.tokenizer.encode(record["outputs"].strip(), add_special_tokens=False)
        answer = answer[: self.max_text_tokens // 2] + [self.tokenizer.eos_token_id]
        prompt = self._prompt_ids(record["instruction"], record["inputs"], False, self.max_text_tokens - len(answer))
        image_ids = [self.image_token_id] * (n_images * self.num_query_tokens)
        input_ids = [self.tokenizer.bos_token_id] + image_ids + prompt + answer
        labels = [IGNORE_INDEX] * (1 + len(image_ids) + len(prompt)) + answer
        return Example(input_ids, labels, self.pixel_values(record["images"]))

    def encode_prompt(self, record: dict, chinese_dialogue: bool = False) -> Example:
        n_images = len(record["images"])
        prompt = self._prompt_ids(record["instruction"], record.get("inputs", ""), chinese_dialogue,
                                  self.max_text_tokens)
        input_ids = [self.tokenizer.bos_token_id] + [self.image_token_id] * (n_images * self.num_query_tokens) + prompt
        return Example(input_ids, [IGNORE_INDEX] * len(input_ids), self.pixel_values(record["images"]))

    # --- batches ------------------------------------------------------------------------------
    def collate(self, examples: list[Example], pad_left: bool = False) -> dict[str, torch.Tensor]:
        """Pad to the longest; training pads right, generation pads left (so answers start together)."""
        width = max(len(e.input_ids) for e in examples)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(examples), width), pad, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(examples), width), dtype=torch.long)
        for i, e in enumerate(examples):
            n = len(e.input_ids)
            span = slice(width - n, width) if pad_left else slice(0, n)
            input_ids[i, span] = torch.tensor(e.input_ids)
            labels[i, span] = torch.tensor(e.labels)
            attention[i, span] = 1
        # Images of all examples, in example order: the model fills <image> slots in that order.
        pixel_values = torch.cat([e.pixel_values for e in examples], dim=0)  # (sum n_images, 3, H, W)
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels, "pixel_values": pixel_values}
