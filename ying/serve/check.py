"""The DAG's serve stage: deploy the Stage II model on Ray Serve and prove it answers over HTTP.

Without ``serve.keep_running`` the stage sends one real request (an evaluation record's image and
instruction), records the answer, and shuts the app down. With it (``--serve``), the app stays up
and the stage returns its URL.
"""

from __future__ import annotations

import base64
import time

import httpx

from ying.config import YingConfig
from ying.data.build import read_records
from ying.serve.app import build_app, deploy, shutdown

__all__ = ["serve_and_check", "request_body"]


def request_body(record: dict) -> dict:
    """A /v1/generate body for a record: its images as base64, its instruction and inputs."""
    return {
        "images": [base64.b64encode(b).decode("ascii") for b in record["images"]],
        "instruction": record["instruction"],
        "inputs": record["inputs"],
    }


def serve_and_check(cfg: YingConfig, checkpoint: str, data_dir: str) -> dict:
    app = build_app(checkpoint, name=f"ying-vlm-{cfg.preset}", max_body_bytes=cfg.serve.max_body_bytes)
    started = time.time()
    base_url = deploy(app, host=cfg.serve.host, port=cfg.serve.port)
    try:
        sample = next(iter(sorted(read_records(data_dir, "validation"), key=lambda r: r["id"])), None)
        if sample is None:
            raise ValueError(f"no validation record under {data_dir} to check the endpoint with")
        health = httpx.get(f"{base_url}/healthz", timeout=30).json()
        resp = httpx.post(f"{base_url}/v1/generate", json=request_body(sample), timeout=120)
        resp.raise_for_status()
        answer = resp.json()
        print(f"[serve] {base_url}/v1/generate answered {answer['output']!r} for {sample['id']}", flush=True)
    except BaseException:
        shutdown()
        raise
    if not cfg.serve.keep_running:
        shutdown()
    return {
        "url": base_url,
        "kept_running": cfg.serve.keep_running,
        "health": health,
        "check": {"id": sample["id"], "instruction": sample["instruction"], "inputs": sample["inputs"],
                  "output": answer["output"], "reference": sample["outputs"]},
        "startup_seconds": round(time.time() - started, 1),
    }
