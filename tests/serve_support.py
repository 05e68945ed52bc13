"""Helpers for the Serve tests: a finished-looking run directory (random-init Stage I/II checkpoints,
stage manifests, a few evaluation records), images, and the cluster's one Serve HTTP port."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from ying import storage
from ying.config import load_config
from ying.data.instructions import load_pool
from ying.data.schema import RECORD_SCHEMA


def png(width: int = 16, height: int = 16, color=(200, 30, 30), fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format=fmt)
    return buf.getvalue()


def data_url(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_port() -> int:
    """Serve's HTTP port on the session cluster: the running one, else a free one (Serve fixes it at its first start)."""
    from ray import serve
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is not None:
        return client.http_config.port
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return port


def _records(task: str, split: str, n: int, lang: str = "en") -> list[dict]:
    pool = load_pool(task)
    colors = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200)]
    rows = []
    for i in range(n):
        color = colors[i % len(colors)]
        name = ["red", "green", "blue", "yellow", "cyan"][i % len(colors)]
        rows.append({
            "id": f"{task}-{split}-{i}", "task": task, "category": "vqa", "lang": lang, "split": split,
            "images": [png(32, 32, color, "JPEG")], "instruction": pool[i % len(pool)],
            "inputs": "What color is the image?" if task != "coco" else "",
            "outputs": f"The answer is {name}." if task != "coco" else f"a {name} square",
            "meta": json.dumps({"original_answer": name, "cocoid": i}),
        })
    return rows


def write_records(data_dir: str, split: str, rows: list[dict]) -> None:
    out = Path(data_dir, "records", split)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA), out / "part-0.parquet")


def make_run_dir(root: str) -> dict:
    """``root`` laid out like a finished run: stage1/stage2 checkpoints with manifests, qc records."""
    from ying.model.checkpoint import save_checkpoint
    from ying.model.tokenizer import build_tokenizer
    from ying.model.vlm import build_model

    cfg = load_config("tiny")
    tok = build_tokenizer(cfg.model.tokenizer)
    paths = {}
    for seed, stage in ((1, "stage1"), (2, "stage2")):
        ckpt = os.path.join(root, stage, "hf")
        save_checkpoint(build_model(cfg.model, tok, seed=seed), tok, cfg.model, ckpt, {"stage": stage})
        storage.write_manifest(os.path.join(root, stage), {"stage": stage, "fingerprint": f"fp-{stage}",
                                                           "outputs": {"checkpoint": ckpt}})
        paths[stage] = ckpt
    qc = os.path.join(root, "qc")
    write_records(qc, "validation", _records("vqa-v2", "validation", 5) + _records("okvqa", "validation", 3))
    write_records(qc, "train", _records("vqa-v2", "train", 4))
    storage.write_manifest(qc, {"stage": "qc", "fingerprint": "fp-qc", "outputs": {"data_dir": qc}})
    storage.write_manifest(os.path.join(root, "sources"), {"stage": "sources", "fingerprint": "fp-src",
                                                           "outputs": {"sources": {}}})
    return {"run_dir": root, "data_dir": qc, **paths}
