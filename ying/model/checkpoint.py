"""Final Hugging Face checkpoints (safetensors) with everything inference needs beside them.

Layout of ``<dir>``: ``config.json`` + ``model.safetensors`` (``save_pretrained``), the tokenizer
files, and ``ying_model.json`` (the ModelConfig it was built from, for the processor's sizes).
``<dir>`` may be local or ``s3://``: we write locally, then upload.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import torch
from transformers import AutoTokenizer, Blip2ForConditionalGeneration

from ying import storage
from ying.config import ModelConfig
from ying.model.processor import YingProcessor

__all__ = ["save_checkpoint", "load_checkpoint", "load_checkpoint_tokenizer", "YING_MODEL_FILE"]

YING_MODEL_FILE = "ying_model.json"


def save_checkpoint(model, tokenizer, model_cfg: ModelConfig, out_dir: str, extra: dict | None = None,
                    state_dict: dict | None = None) -> None:
    """``state_dict``: the weights to write when ``model``'s own are partitioned (ZeRO-3 gathers them)."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        with open(os.path.join(tmp, YING_MODEL_FILE), "w") as f:
            json.dump({"model": model_cfg.model_dump(mode="json"), **(extra or {})}, f, indent=2)
        fs, path = storage.filesystem(out_dir)
        fs.makedirs(path, exist_ok=True)
        for name in os.listdir(tmp):
            fs.put(os.path.join(tmp, name), f"{path}/{name}")


def load_checkpoint(path: str, device: str | torch.device | None = "cpu", dtype: str = "float32",
                    attn_implementation: str = "auto", on_gpu: bool = False):
    """(model in eval mode, tokenizer, processor, ying metadata) from a checkpoint directory.

    Weights load straight into ``dtype`` on ``device`` (``None``: let an active DeepSpeed ZeRO-3
    config place them, partitioned). An ``s3://`` checkpoint is downloaded to a temporary folder that
    is removed once the model is in memory.
    """
    from ying.model.weights import resolve_attn_implementation, torch_dtype

    fs, fs_path = storage.filesystem(path)
    if not fs.exists(f"{fs_path}/{YING_MODEL_FILE}"):
        raise FileNotFoundError(f"{path} is not a Ying checkpoint: {YING_MODEL_FILE} is missing")
    tmp = tempfile.mkdtemp(prefix="ying-ckpt-") if "://" in str(path) else None
    try:
        local = path
        if tmp:
            fs.get(fs_path + "/", tmp + "/", recursive=True)
            local = tmp
        with open(os.path.join(local, YING_MODEL_FILE)) as f:
            meta = json.load(f)
        model_cfg = ModelConfig.model_validate(meta["model"])
        tokenizer = AutoTokenizer.from_pretrained(local)
        kwargs = {"dtype": torch_dtype(dtype),
                  "attn_implementation": resolve_attn_implementation(attn_implementation, on_gpu)}
        if device is not None:
            kwargs["device_map"] = {"": torch.device(device)}
        model = Blip2ForConditionalGeneration.from_pretrained(local, **kwargs).eval()
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    processor = YingProcessor.from_model_config(tokenizer, model_cfg)
    return model, tokenizer, processor, meta


def load_checkpoint_tokenizer(path: str):
    """Only the tokenizer of a checkpoint (an ``s3://`` one: its files but the weights are fetched)."""
    if "://" not in str(path):
        return AutoTokenizer.from_pretrained(path)
    fs, fs_path = storage.filesystem(path)
    tmp = tempfile.mkdtemp(prefix="ying-tok-")
    try:
        for f in fs.ls(fs_path, detail=False):
            name = f.rstrip("/").rsplit("/", 1)[-1]
            if not name.endswith((".safetensors", ".bin", ".pt")) and not fs.isdir(f):
                fs.get(f, os.path.join(tmp, name))
        return AutoTokenizer.from_pretrained(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
