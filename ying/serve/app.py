"""Ray Serve app: the trained Ying-VLM behind a small HTTP API.

    app = build_app("runs/default/train_stage2/checkpoint", name="ying-vlm-tiny", max_body_bytes=8 << 20)
    base_url = deploy(app, host="127.0.0.1", port=8000)
    # POST {base_url}/v1/generate  {"images": [<base64>...], "instruction": "...", "inputs": "..."}
    #   -> {"output": "...", "model": "ying-vlm-tiny"}
    # GET  {base_url}/healthz       -> {"status": "ok", "model": "ying-vlm-tiny"}
    shutdown()

The model sits behind the ``Predictor`` protocol; the replica builds it by calling the factory
named by ``predictor_factory`` (``"module:attr.attr"``) with the checkpoint directory, so this
module imports no model code and tests can serve a small predictor of their own.

Guards, in the FastAPI app (Ray's token auth does not cover the Serve port, and Serve has no
request-size limit of its own):
- bearer auth when ``YING_SERVE_TOKEN`` is set (compared with ``secrets.compare_digest``);
  ``GET /healthz`` stays open for load-balancer probes. ``build_app`` forwards the driver's value
  to the replicas through the deployment's runtime_env, where anyone who can read the cluster's
  Serve config can see it; export it on the cluster nodes instead if that matters.
- 413 for a body over ``max_body_bytes``, from ``Content-Length`` before the body is read (a
  chunked body without one is buffered up to the limit and then refused).
- 400 for an image that isn't base64, or isn't a decodable image, or is larger than
  ``max_image_pixels``; 422 for a missing or mistyped field.
Serve's own ``/-/healthz`` and ``/-/routes`` bypass these guards. Serve's proxy honours a
client's ``x-request-timeout-seconds`` header before the app sees it; put a reverse proxy that
strips it in front where that matters.
"""

# No `from __future__ import annotations`: the route methods are pickled by value into the
# replica, where FastAPI must resolve their annotations as real objects, not strings.

import asyncio
import base64
import binascii
import importlib
import io
import logging
import os
import secrets
from typing import Any, Callable, Protocol, runtime_checkable

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

__all__ = [
    "Predictor",
    "GenerateRequest",
    "GenerateResponse",
    "TOKEN_ENV",
    "DEFAULT_PREDICTOR_FACTORY",
    "build_app",
    "deploy",
    "shutdown",
    "load_predictor_factory",
    "decode_images",
]

logger = logging.getLogger(__name__)

TOKEN_ENV = "YING_SERVE_TOKEN"
DEFAULT_PREDICTOR_FACTORY = "ying.model.inference:YingPredictor.from_checkpoint"


@runtime_checkable
class Predictor(Protocol):
    """What the Serve app needs from a model.

    An example is ``{"images": list[bytes], "instruction": str, "inputs": str}`` with encoded image
    bytes (PNG, JPEG, ...; a video is its frames). ``generate`` returns one string per example,
    in order.
    """

    def generate(self, examples: list[dict]) -> list[str]: ...


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    images: list[str] = Field(min_length=1, description="base64-encoded images (a data: URL prefix is allowed)")
    instruction: str = Field(min_length=1)
    inputs: str = ""


class GenerateResponse(BaseModel):
    output: str
    model: str


def load_predictor_factory(path: str) -> Callable[[str], Predictor]:
    """Resolve ``"package.module:Attr.attr"`` to the callable it names."""
    module_name, sep, attr_path = path.partition(":")
    if not sep or not module_name or not attr_path:
        raise ValueError(f"predictor_factory must look like 'package.module:Class.method', got {path!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ImportError(f"predictor_factory {path!r}: cannot import {module_name!r}: {e}") from e
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            raise AttributeError(f"predictor_factory {path!r}: no attribute {part!r}") from e
    if not callable(obj):
        raise TypeError(f"predictor_factory {path!r} names a {type(obj).__name__}, not a callable")
    return obj


def decode_images(images_b64: list[str], max_image_pixels: int) -> list[bytes]:
    """Base64 strings to image bytes; raises ValueError with the offending index on bad input."""
    from PIL import Image

    decoded = []
    for i, text in enumerate(images_b64):
        if text.startswith("data:"):
            _, comma, text = text.partition(",")
            if not comma:
                raise ValueError(f"images[{i}] is a data: URL without a ',' before the base64 payload")
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ValueError(f"images[{i}] is not valid base64: {e}") from None
        if not raw:
            raise ValueError(f"images[{i}] is empty")
        try:
            with Image.open(io.BytesIO(raw)) as img:
                width, height = img.size  # header only; no pixel decode here
                img.verify()
        except Exception as e:  # PIL raises many types for junk input
            raise ValueError(f"images[{i}] is not a decodable image: {type(e).__name__}: {e}") from None
        if width * height > max_image_pixels:
            raise ValueError(
                f"images[{i}] has {width}x{height} = {width * height} pixels, over the limit of {max_image_pixels}"
            )
        decoded.append(raw)
    return decoded


class _GuardMiddleware:
    """Pure ASGI middleware: bearer auth, then the request-size limit."""

    def __init__(self, app, max_body_bytes: int, token_env: str, open_paths: frozenset[str]):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.open_paths = open_paths
        # Read in the replica (the middleware stack is built on the first request there).
        self.token = os.environ.get(token_env) or None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.lower(): v for k, v in scope.get("headers", [])}

        path = scope.get("path", "/")
        root = scope.get("root_path", "")
        if root and path.startswith(root):  # under a route_prefix, match routes as the app sees them
            path = path[len(root):] or "/"
        if self.token is not None and path not in self.open_paths:
            scheme, _, given = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), self.token.encode()):
                return await _json_response(
                    send, 401, {"detail": "missing or wrong bearer token"}, {b"www-authenticate": b"Bearer"}
                )

        length = headers.get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return await _json_response(send, 400, {"detail": "Content-Length is not an integer"})
            if n > self.max_body_bytes:
                return await _json_response(send, 413, _too_large(n, self.max_body_bytes))
            return await self.app(scope, receive, send)

        if scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        # No Content-Length (chunked): buffer up to the limit, then replay.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_body_bytes:
                return await _json_response(send, 413, _too_large(size, self.max_body_bytes, at_least=True))
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay_receive():
            return replay.pop() if replay else await receive()

        return await self.app(scope, replay_receive, send)


def _too_large(n: int, limit: int, at_least: bool = False) -> dict:
    size = f"at least {n}" if at_least else str(n)
    return {"detail": f"request body is {size} bytes, over the limit of {limit} bytes (max_body_bytes)"}


async def _json_response(send, status: int, payload: dict, extra_headers: dict | None = None):
    import json

    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += list((extra_headers or {}).items())
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _make_deployment(
    *,
    max_body_bytes: int,
    max_batch_size: int,
    batch_wait_timeout_s: float,
    num_replicas: int,
    ray_actor_options: dict,
):
    """The FastAPI app and the deployment class around it; built per call so limits are explicit."""
    fastapi_app = FastAPI(title="Ying-VLM", docs_url=None, redoc_url=None, openapi_url=None)
    fastapi_app.add_middleware(
        _GuardMiddleware, max_body_bytes=max_body_bytes, token_env=TOKEN_ENV, open_paths=frozenset({"/healthz"})
    )

    @serve.deployment(name="YingVLM", num_replicas=num_replicas, ray_actor_options=ray_actor_options)
    @serve.ingress(fastapi_app)
    class YingVLMServer:
        def __init__(self, checkpoint_dir: str, name: str, predictor_factory: str, max_image_pixels: int):
            self.name = name
            self.max_image_pixels = max_image_pixels
            self.predictor: Predictor = load_predictor_factory(predictor_factory)(checkpoint_dir)
            if not callable(getattr(self.predictor, "generate", None)):
                raise TypeError(f"{predictor_factory} returned {type(self.predictor).__name__}, which has no generate()")
            logger.info("serving %s from %s via %s", name, checkpoint_dir, predictor_factory)

        @fastapi_app.get("/healthz")
        async def healthz(self) -> dict:
            return {"status": "ok", "model": self.name}

        @fastapi_app.post("/v1/generate", response_model=GenerateResponse)
        async def generate(self, request: GenerateRequest) -> GenerateResponse:
            try:
                images = decode_images(request.images, self.max_image_pixels)
            except ValueError as e:
                raise HTTPException(status_code=400, detail=str(e)) from None
            example = {"images": images, "instruction": request.instruction, "inputs": request.inputs}
            try:
                output = await self._generate_batch(example)
            except Exception as e:
                logger.exception("generation failed")
                raise HTTPException(status_code=500, detail=f"generation failed: {type(e).__name__}") from None
            return GenerateResponse(output=output, model=self.name)

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s)
        async def _generate_batch(self, examples: list[dict]) -> list[str]:
            # One batch at a time (max_concurrent_batches=1), off the event loop so /healthz stays live.
            outputs = await asyncio.to_thread(self.predictor.generate, examples)
            if len(outputs) != len(examples):
                raise RuntimeError(f"predictor returned {len(outputs)} outputs for {len(examples)} examples")
            return [str(o) for o in outputs]

    return YingVLMServer


def build_app(
    checkpoint_dir: str,
    name: str,
    max_body_bytes: int,
    predictor_factory: str = DEFAULT_PREDICTOR_FACTORY,
    *,
    max_image_pixels: int = 64_000_000,
    max_batch_size: int = 8,
    batch_wait_timeout_s: float = 0.02,
    num_replicas: int = 1,
    num_cpus: float = 1,
    num_gpus: float = 0,
    runtime_env: dict | None = None,
):
    """A bound Serve application for ``serve.run`` / ``deploy``.

    ``predictor_factory`` names a callable ``(checkpoint_dir) -> Predictor``, imported in the
    replica: its module must be importable there (installed, in the job's working_dir, or on a
    ``PYTHONPATH`` given through ``runtime_env``, which goes to the replicas' actor options).
    """
    if max_body_bytes <= 0:
        raise ValueError(f"max_body_bytes must be positive, got {max_body_bytes}")
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    if ":" not in predictor_factory:
        raise ValueError(f"predictor_factory must look like 'package.module:Class.method', got {predictor_factory!r}")

    ray_actor_options: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus}
    runtime_env = dict(runtime_env or {})
    token = os.environ.get(TOKEN_ENV)
    if token:
        runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), TOKEN_ENV: token}
    if runtime_env:
        ray_actor_options["runtime_env"] = runtime_env

    deployment = _make_deployment(
        max_body_bytes=max_body_bytes,
        max_batch_size=max_batch_size,
        batch_wait_timeout_s=batch_wait_timeout_s,
        num_replicas=num_replicas,
        ray_actor_options=ray_actor_options,
    )
    return deployment.bind(checkpoint_dir, name, predictor_factory, max_image_pixels)


def deploy(app, host: str = "127.0.0.1", port: int = 8000, *, app_name: str = "ying", route_prefix: str = "/") -> str:
    """Start Serve's HTTP proxy on host:port, run ``app`` and return its base URL once it is healthy.

    Serve's HTTP options are cluster-wide and fixed by the first start: if Serve already runs on
    another host/port, stop it with ``shutdown()`` first.
    """
    serve.start(http_options={"host": host, "port": port})
    serve.run(app, name=app_name, route_prefix=route_prefix)
    url_host = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, host)
    prefix = "" if route_prefix == "/" else route_prefix.rstrip("/")
    return f"http://{url_host}:{port}{prefix}"


def shutdown() -> None:
    """Delete every Serve app and stop Serve's actors (Ray itself keeps running)."""
    serve.shutdown()
