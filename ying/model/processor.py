"""Records to tensors: image preprocessing, prompt + answer token ids, the label mask, collation.

Sequence layout for one example with ``n`` images (a video is ``n`` frames)::

    [<image> x (n * num_query_tokens)] [prompt tokens] [answer tokens] [</s>]
     labels: -100 ...................   -100 ......... answer ids ...... eos

Loss is on the answer tokens (and the closing eos) only: the model is never taught to predict
its instruction or the image placeholders. An answer cut by the length limit gets no eos: the
model must not learn to stop mid-answer.

A text-only record (no images, no instruction, no inputs: the ``pretrain`` stage's plain text) is
a causal LM example on the whole text: ``<s> text </s>``, with labels on every text token and the
eos (a text cut by the length limit again gets no eos).

Training splits the work in two (``encode_train_arrays`` runs on Ray Data's CPU workers, and
``collate_arrays`` on the training worker): images travel resized as uint8, a quarter of the
bytes of float32, and are normalised where they are used.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase

from ying.model.prompt import format_prompt
from ying.model.tokenizer import IMAGE_TOKEN

__all__ = ["IGNORE_INDEX", "YingProcessor", "Example", "answer_budget"]

IGNORE_INDEX = -100


def answer_budget(max_text_tokens: int) -> int:
    """The most tokens a training answer keeps (a longer one is cut there, without eos): also the most
    positions per example at which the LM head runs in training (``ying.model.vlm.answer_loss``)."""
    return max_text_tokens // 2


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    pixel_values: torch.Tensor  # (n_images, 3, H, W)


class YingProcessor:
    """Turns records into model inputs. Plain Python: testable without Ray or a model."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, image_size: int, num_query_tokens: int,
                 max_text_tokens: int, image_mean: tuple[float, ...] = (0.48145466, 0.4578275, 0.40821073),
                 image_std: tuple[float, ...] = (0.26862954, 0.26130258, 0.27577711)):
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.num_query_tokens = num_query_tokens
        self.max_text_tokens = max_text_tokens
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self._mean = np.array(image_mean, dtype=np.float32).reshape(3, 1, 1)
        self._std = np.array(image_std, dtype=np.float32).reshape(3, 1, 1)

    @classmethod
    def from_model_config(cls, tokenizer: PreTrainedTokenizerBase, model_cfg) -> "YingProcessor":
        """The processor of a model built from ``model_cfg`` (a ``ModelConfig``): its image size and
        normalisation (the BLIP-2 checkpoint's, once resolved), query tokens and text budget."""
        v = model_cfg.vision
        return cls(tokenizer, v.image_size, model_cfg.num_query_tokens, model_cfg.max_text_tokens,
                   image_mean=v.image_mean, image_std=v.image_std)

    # --- images -------------------------------------------------------------------------------
    def pixels_uint8(self, images: list[bytes]) -> np.ndarray:
        """(n_images, 3, H, W) uint8: decoded, RGB, resized (bicubic) as BLIP-2's image processor does."""
        arrays = []
        for blob in images:
            with Image.open(io.BytesIO(blob)) as im:
                im = im.convert("RGB").resize((self.image_size, self.image_size), Image.BICUBIC)
                arrays.append(np.asarray(im, dtype=np.uint8).transpose(2, 0, 1))
        if not arrays:  # a text-only record: no images, still (0, 3, H, W)
            return np.zeros((0, 3, self.image_size, self.image_size), dtype=np.uint8)
        return np.stack(arrays)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (n, 3, H, W) -> float32 scaled to [0, 1] and normalised by the model's mean and std."""
        mean = torch.from_numpy(self._mean).to(pixels.device)
        std = torch.from_numpy(self._std).to(pixels.device)
        return (pixels.to(torch.float32) / 255.0 - mean) / std

    def pixel_values(self, images: list[bytes]) -> torch.Tensor:
        """(n_images, 3, H, W), resized and normalised as BLIP-2's image processor does."""
        return self.normalize(torch.from_numpy(self.pixels_uint8(images)))

    # --- text ---------------------------------------------------------------------------------
    def _prompt_ids(self, instruction: str, inputs: str, chinese_dialogue: bool, budget: int) -> list[int]:
        ids = self.tokenizer.encode(format_prompt(instruction, inputs, chinese_dialogue), add_special_tokens=False)
        if len(ids) > budget:
            # Keep the start (instruction) and the "<bot>:" tail that cues the answer; cut the middle.
            tail = self.tokenizer.encode("\n<bot>:\n", add_special_tokens=False)
            ids = ids[: max(budget - len(tail), 1)] + tail
        return ids

    def _text_ids(self, text: str) -> tuple[list[int], list[int]]:
        """A plain-text example: ``<s> text </s>``, labels on the text and the eos (cut text: no eos)."""
        ids = self.tokenizer.encode(text.strip(), add_special_tokens=False)
        limit = self.max_text_tokens - 1  # bos + text (+ eos) within the text budget
        ids = ids[:limit] if len(ids) >= limit else ids + [self.tokenizer.eos_token_id]
        return [self.tokenizer.bos_token_id] + ids, [IGNORE_INDEX] + ids

    def _train_ids(self, record: dict) -> tuple[list[int], list[int]]:
        n_images = len(record["images"])
        if not n_images and not record["instruction"].strip() and not record["inputs"].strip():
            return self._text_ids(record["outputs"])
        answer = self.tokenizer.encode(record["outputs"].strip(), add_special_tokens=False)
        limit = answer_budget(self.max_text_tokens)
        # A cut answer ends without eos: teaching "stop here" mid-sentence would be wrong.
        answer = answer[:limit] if len(answer) > limit else answer + [self.tokenizer.eos_token_id]
        prompt = self._prompt_ids(record["instruction"], record["inputs"], False, self.max_text_tokens - len(answer))
        image_ids = [self.image_token_id] * (n_images * self.num_query_tokens)
        input_ids = [self.tokenizer.bos_token_id] + image_ids + prompt + answer
        labels = [IGNORE_INDEX] * (1 + len(image_ids) + len(prompt)) + answer
        return input_ids, labels

    def encode_train(self, record: dict) -> Example:
        input_ids, labels = self._train_ids(record)
        return Example(input_ids, labels, self.pixel_values(record["images"]))

    def encode_train_arrays(self, record: dict) -> dict[str, np.ndarray]:
        """The CPU half of training preprocessing (Ray Data workers): token ids, labels, uint8 pixels."""
        input_ids, labels = self._train_ids(record)
        return {"input_ids": np.asarray(input_ids, dtype=np.int32), "labels": np.asarray(labels, dtype=np.int32),
                "pixels": self.pixels_uint8(record["images"])}

    def encode_prompt(self, record: dict, chinese_dialogue: bool = False) -> Example:
        n_images = len(record["images"])
        prompt = self._prompt_ids(record["instruction"], record.get("inputs", ""), chinese_dialogue,
                                  self.max_text_tokens)
        input_ids = [self.tokenizer.bos_token_id] + [self.image_token_id] * (n_images * self.num_query_tokens) + prompt
        return Example(input_ids, [IGNORE_INDEX] * len(input_ids), self.pixel_values(record["images"]))

    # --- batches ------------------------------------------------------------------------------
    def _pad(self, ids: list, labels: list, pad_left: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input_ids, labels, attention_mask), each (B, longest); ``ids``/``labels`` are per-example sequences."""
        width = max(len(i) for i in ids)
        input_ids = torch.full((len(ids), width), self.tokenizer.pad_token_id, dtype=torch.long)
        label_ids = torch.full((len(ids), width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(ids), width), dtype=torch.long)
        for row, (row_ids, row_labels) in enumerate(zip(ids, labels)):
            n = len(row_ids)
            span = slice(width - n, width) if pad_left else slice(0, n)
            input_ids[row, span] = torch.as_tensor(np.asarray(row_ids, dtype=np.int64))
            label_ids[row, span] = torch.as_tensor(np.asarray(row_labels, dtype=np.int64))
            attention[row, span] = 1
        return input_ids, label_ids, attention

    def collate(self, examples: list[Example], pad_left: bool = False) -> dict[str, torch.Tensor]:
        """Pad to the longest; training pads right, generation pads left (so answers start together)."""
        input_ids, labels, attention = self._pad([e.input_ids for e in examples], [e.labels for e in examples], pad_left)
        # Images of all examples, in example order: the model fills <image> slots in that order.
        pixel_values = torch.cat([e.pixel_values for e in examples], dim=0)  # (sum n_images, 3, H, W)
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels, "pixel_values": pixel_values}

    def collate_arrays(self, input_ids: list[np.ndarray], labels: list[np.ndarray],
                       pixels: list[np.ndarray]) -> dict[str, torch.Tensor]:
        """The training worker's half of ``encode_train_arrays``: right-padded ids, and images normalised here."""
        ids, label_ids, attention = self._pad(input_ids, labels, pad_left=False)
        pixel_values = self.normalize(torch.from_numpy(np.concatenate(pixels, axis=0)))  # (sum n_images, 3, H, W)
        return {"input_ids": ids, "attention_mask": attention, "labels": label_ids, "pixel_values": pixel_values}
