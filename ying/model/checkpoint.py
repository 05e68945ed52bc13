"""Final Hugging Face checkpoints (safetensors) with everything inference needs beside them.

Layout of ``<dir>``: ``config.json`` + ``model.safetensors`` (``save_pretrained``), the tokenizer
files, and ``ying_model.json`` (the ModelConfig it was built from, for the processor's sizes).
``<dir>`` may be local or ``s3://``: we write locally, then upload.
"""

from __future__ import annotations

import json
import os
import tempfile

import torch
from transformers import AutoTokenizer, Blip2ForConditionalGeneration

from ying import storage
from ying.config import ModelConfig
from ying.model.processor import YingProcessor

__all__ = ["save_checkpoint", "load_checkpoint", "YING_MODEL_FILE"]

YING_MODEL_FILE = "ying_model.json"


def save_checkpoint(model, tokenizer, model_cfg: ModelConfig, out_dir: str, extra: dict | None = None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        with open(os.path.join(tmp, YING_MODEL_FILE), "w") as f:
            json.dump({"model": model_cfg.model_dump(mode="json"), **(extra or {})}, f, indent=2)
        fs, path = storage.filesystem(out_dir)
        fs.makedirs(path, exist_ok=True)
        for name in os.listdir(tmp):
            fs.put(os.path.join(tmp, name), f"{path}/{name}")


def load_checkpoint(path: str, device: str = "cpu"):
    """(model in eval mode, tokenizer, processor, ying metadata) from a checkpoint directory."""
    fs, fs_path = storage.filesystem(path)
    if not fs.exists(f"{fs_path}/{YING_MODEL_FILE}"):
        raise FileNotFoundError(f"{path} is not a Ying checkpoint: {YING_MODEL_FILE} is missing")
    local = path
    tmp = None
    if "://" in str(path):
        tmp = tempfile.mkdtemp(prefix="ying-ckpt-")
        fs.get(fs_path + "/", tmp + "/", recursive=True)
        local = tmp
    with open(os.path.join(local, YING_MODEL_FILE)) as f:
        meta = json.load(f)
    model_cfg = ModelConfig.model_validate(meta["model"])
    tokenizer = AutoTokenizer.from_pretrained(local)
    model = Blip2ForConditionalGeneration.from_pretrained(local, torch_dtype=torch.float32).to(device).eval()
    processor = YingProcessor(tokenizer, model_cfg.vision.image_size, model_cfg.num_query_tokens,
                              model_cfg.max_text_tokens)
    return model, tokenizer, processor, meta
