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

__all__ = ["save_checkpoint", "load_checkpoint", "load_checkpoint_tokenizer", "inference_dtype", "YING_MODEL_FILE"]

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


def inference_dtype(device: str | torch.device | None, model_dtype: str) -> str:
    """The dtype a model runs in on ``device``: the config's ``model.dtype`` on a GPU (the paper
    preset's bfloat16: the 14B model takes 26 GiB instead of 53 and fits one 40 GB A100), float32
    on a CPU, where 16-bit matmuls are emulated and slow on most processors. ``device=None``
    (DeepSpeed ZeRO-3 places the weights on the GPUs) counts as a GPU."""
    if device is not None and torch.device(device).type != "cuda":
        return "float32"
    return model_dtype


def _dtype_name(dtype: str | torch.dtype) -> str:
    return str(dtype).removeprefix("torch.") if isinstance(dtype, torch.dtype) else dtype


def load_checkpoint(path: str, dtype: str | torch.dtype | None = None, device: str | torch.device | None = "cpu",
                    attn_implementation: str = "auto", on_gpu: bool | None = None):
    """(model in eval mode, tokenizer, processor, ying metadata) from a checkpoint directory.

    The one checkpoint loader: training's init checkpoint, evaluation, the ablations, Serve.
    Weights load straight into ``dtype`` on ``device``, so a 13B LLM never exists in float32 on the
    host (``None``: ``inference_dtype`` of the checkpoint's own ``model.dtype``, i.e. the training
    config's dtype on a GPU and float32 on a CPU). ``device=None``: let an active DeepSpeed ZeRO-3
    config place them, partitioned. ``on_gpu`` (default: ``device`` is cuda and the dtype 16-bit)
    lets ``attn_implementation="auto"`` pick flash-attention. An ``s3://`` checkpoint is downloaded
    to a temporary folder that is removed once the model is in memory, also when loading fails.
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
        dtype = _dtype_name(dtype) if dtype is not None else inference_dtype(device, model_cfg.dtype)
        if on_gpu is None:
            # flash-attention runs only in 16 bit on CUDA; anything else gets PyTorch's sdpa.
            on_gpu = device is not None and torch.device(device).type == "cuda" and dtype != "float32"
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
