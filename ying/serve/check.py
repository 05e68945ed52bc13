"""The DAG's serve stage: deploy the run's models on Ray Serve and prove they answer over HTTP.

The check is one real OpenAI-style chat request (an evaluation record's images and instruction) to
the Stage II model, with the bearer token when one is set (read here, in the stage's worker, from
``YING_SERVE_TOKEN`` or ``serve.token_file``). Without ``serve.keep_running`` the stage then deletes
its own app; with it (``--serve``) the app stays up and the stage returns its URL.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import time

import httpx

from ying.config import YingConfig
from ying.data.records import read_records

__all__ = ["serve_and_check", "chat_body"]


def _data_url(image: bytes) -> str:
    from PIL import Image

    with Image.open(io.BytesIO(image)) as img:
        mime = Image.MIME.get(img.format or "", "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(image).decode('ascii')}"


def chat_body(record: dict, model: str, max_tokens: int) -> dict:
    """A /v1/chat/completions body for a record: instruction, then inputs, then its images."""
    content = [{"type": "text", "text": record["instruction"]}]
    if record.get("inputs"):
        content.append({"type": "text", "text": record["inputs"]})
    content += [{"type": "image_url", "image_url": {"url": _data_url(b)}} for b in record["images"]]
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "chinese_dialogue": record.get("lang") == "zh"}


def serve_and_check(cfg: YingConfig, checkpoint: str, data_dir: str) -> dict:
    from ying.serve.app import application
    from ying.serve.auth import read_token, token_digest
    from ying.serve.models import resolve_models
    from ying.serve.runner import delete_app, deploy

    s = cfg.serve
    token = read_token(s.token_file)
    served = resolve_models(cfg, run_dir=cfg.run.run_dir, data_dir=data_dir)
    served = dataclasses.replace(served, checkpoints={**served.checkpoints, "stage2": checkpoint})
    sample = next(iter(sorted(read_records(data_dir, "validation"), key=lambda r: r["id"])), None)
    if sample is None:
        raise ValueError(f"no validation record under {data_dir} to check the endpoint with")
    started = time.time()
    base_url = deploy(application(cfg, served, token_digest(token)), host=s.host, port=s.port,
                      app_name=s.app_name, route_prefix=s.route_prefix, has_token=token is not None, quiet=True)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        health = httpx.get(f"{base_url}/healthz", timeout=30).json()
        resp = httpx.post(f"{base_url}/v1/chat/completions", json=chat_body(sample, "stage2", cfg.eval.max_new_tokens),
                          headers=headers, timeout=120)
        if resp.status_code != 200:
            raise RuntimeError(f"{base_url}/v1/chat/completions answered {resp.status_code}: {resp.text[:500]}")
        answer = resp.json()["choices"][0]["message"]["content"]
        print(f"[serve] {base_url}/v1/chat/completions answered {answer!r} for {sample['id']}", flush=True)
    except BaseException:
        delete_app(s.app_name)
        raise
    if not s.keep_running:
        delete_app(s.app_name)
    return {
        "url": base_url,
        "app_name": s.app_name,
        "models": sorted(served.checkpoints),
        "kept_running": s.keep_running,
        "health": health,
        "check": {"id": sample["id"], "instruction": sample["instruction"], "inputs": sample["inputs"],
                  "output": answer, "reference": sample["outputs"]},
        "startup_seconds": round(time.time() - started, 1),
    }
