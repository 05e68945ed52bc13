"""The Ray Serve application: Ying-VLM behind an OpenAI-compatible API, with evaluations over HTTP.

    serve run ying.serve.app:build run_dir=runs/default            # a run's Stage I + II checkpoints
    serve run ying.serve.app:build checkpoint=runs/default/stage2/hf model_name=ying
    serve build ying.serve.app:app -o serve.yaml                    # then point it at ying.serve.app:build + args
    ying serve --run-dir runs/default                               # the same, until Ctrl-C / SIGTERM

Three deployments:

- ``YingIngress`` (FastAPI): bearer auth, the body limit, request validation, image decoding and
  the prompt's encoding (tokens and pixels, off the event loop), then a call to the model deployment with the request's model as Serve's
  multiplexed model id. Routes: ``POST /v1/chat/completions`` (SSE when ``stream``),
  ``GET /v1/models[/{id}]``, ``POST /v1/evaluations``, ``GET /v1/evaluations/{id}``, ``GET /healthz``.
- ``YingModel``: loads checkpoints on demand (``@serve.multiplexed``, LRU per replica), batches
  requests of one model continuously (``ying.serve.engine.ContinuousBatcher``: a request joins the
  running batch at the next token and leaves it when it ends), generates on a GPU in the
  checkpoint's ``model.dtype`` (``ying.model.checkpoint.inference_dtype``; bfloat16 for the paper preset). Its health check
  runs the model on a tiny input. ``max_queued_requests`` bounds the queue; past it the ingress
  answers 503 with Retry-After.
- ``EvaluationRegistry``: one replica holding evaluation states; evaluations run as Ray tasks.

The builder takes one typed argument (``AppArgs``), so ``serve run``/``serve deploy`` can build
the app from key=value pairs or a config file's ``args:``.
"""

# No `from __future__ import annotations`: FastAPI resolves route annotations at runtime, and Serve
# checks the builder's annotation is a pydantic class.

import asyncio
import io
import json
import logging
import time
import uuid
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, field_validator
from ray import serve
from ray.serve.exceptions import BackPressureError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ying.config import YingConfig, load_config
from ying.serve.auth import Guard, GuardMiddleware, TokenDigest, is_loopback, read_token, token_digest
from ying.serve.engine import (
    BatchStats,
    ContinuousBatcher,
    GenerationRequest,
    GenerationResult,
    load_engine,
    load_preparer,
    read_model_limits,
)
from ying.serve.evaluations import EvaluationRegistry, resolve_suite
from ying.serve.models import ServedModels, resolve_models
from ying.serve.protocol import (
    ChatCompletionRequest,
    EvaluationRequest,
    RequestError,
    RequestLimits,
    chat_chunk,
    chat_completion,
    decode_image,
    error_body,
    parse_chat,
)

__all__ = ["AppArgs", "build", "application", "YingIngress", "YingModel"]

logger = logging.getLogger(__name__)


class AppArgs(BaseModel):
    """The builder's argument (``serve run ying.serve.app:build key=value ...`` or a config's ``args:``)."""

    model_config = ConfigDict(extra="forbid")

    run_dir: Optional[str] = None  # serve this run's stage1 and stage2 checkpoints; evaluate on its qc data
    checkpoint: Optional[str] = None  # or (also) one checkpoint directory ...
    model_name: str = "ying-vlm"  # ... served under this name
    data_dir: Optional[str] = None  # records for /v1/evaluations (default: the run's qc output)
    preset: str = "tiny"  # the config preset; its serve section sizes the app
    config: Optional[str] = None  # a YAML file merged over the preset
    overrides: list[str] = []  # dotted overrides, e.g. ["serve.max_batch_size=8"]

    @field_validator("overrides", mode="before")
    @classmethod
    def _one_override(cls, v):
        return [v] if isinstance(v, str) else v  # `serve run ... overrides=serve.max_tokens=64`


def build(args: AppArgs):
    """The application for ``args``: config, served checkpoints and the token, resolved here."""
    overrides = list(args.overrides) + ([f"run.run_dir={args.run_dir}"] if args.run_dir else [])
    cfg = load_config(args.preset, args.config, overrides)
    served = resolve_models(cfg, run_dir=args.run_dir and cfg.run.run_dir, checkpoint=args.checkpoint,
                            model_name=args.model_name, data_dir=args.data_dir)
    return application(cfg, served, token_digest(read_token(cfg.serve.token_file)))


# The request path's replicas (ingress and model) run Serve's request handling, the router to the
# next deployment and our handlers on one event loop rather than three (Ray's own throughput
# settings, RAY_SERVE_THROUGHPUT_OPTIMIZED's per-replica part): each request skips two thread hops,
# which on a small machine cost as much CPU as the tiny model's share of a batched request. Safe
# here because no handler blocks its loop: image decoding and generation run in threads.
_REQUEST_PATH_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}


def application(cfg: YingConfig, served: Optional[ServedModels], token: Optional[TokenDigest]):
    """Bind the three deployments with the options ``cfg.serve`` asks for."""
    s = cfg.serve
    model_options: dict[str, Any] = dict(
        ray_actor_options={"num_cpus": s.num_cpus_per_replica, "num_gpus": s.num_gpus_per_replica,
                           "runtime_env": {"env_vars": _REQUEST_PATH_ENV}},
        max_ongoing_requests=s.ongoing_requests,
        max_queued_requests=s.max_queued_requests,
        backpressure_config={"status_code": 503, "retry_after_s": s.retry_after_s},
        health_check_period_s=s.health_check_period_s,
        health_check_timeout_s=s.health_check_timeout_s,
    )
    if s.autoscaling:
        model_options["autoscaling_config"] = s.autoscaling.model_dump()
    else:
        model_options["num_replicas"] = s.num_replicas
    model = YingModel.options(**model_options).bind(served, s.max_batch_size, s.batch_wait_timeout_s,
                                                     s.max_models_per_replica, s.num_cpus_per_replica)
    registry = EvaluationDeployment.options(num_replicas=1, ray_actor_options={"num_cpus": 0}).bind(cfg, served)
    ingress_ongoing = max(4 * s.ongoing_requests, 64)
    return YingIngress.options(
        num_replicas=s.ingress_replicas,
        ray_actor_options={"num_cpus": s.ingress_num_cpus, "runtime_env": {"env_vars": _REQUEST_PATH_ENV}},
        max_ongoing_requests=ingress_ongoing, max_queued_requests=2 * ingress_ongoing,
        backpressure_config={"status_code": 503, "retry_after_s": s.retry_after_s},
    ).bind(model, registry, cfg, served, token)


def __getattr__(name: str):
    # `serve build ying.serve.app:app` wants an Application object: the deployments and their options
    # for the default config. It serves nothing until pointed at `ying.serve.app:build` with args.
    if name == "app":
        return application(load_config("tiny"), None, None)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _require_served(served: Optional[ServedModels]) -> ServedModels:
    if served is None:
        raise ValueError("ying.serve.app:app is the template `serve build` reads; deploy "
                         "import_path: ying.serve.app:build with args (run_dir: ... or checkpoint: ...)")
    return served


# ---- the model deployment --------------------------------------------------------------------

_HEALTH_IMAGE = None


def _health_request() -> GenerationRequest:
    global _HEALTH_IMAGE
    if _HEALTH_IMAGE is None:
        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (128, 128, 128)).save(buf, format="PNG")
        _HEALTH_IMAGE = buf.getvalue()
    return GenerationRequest(images=[_HEALTH_IMAGE], instruction="Describe the image.", max_new_tokens=1)


@serve.deployment(name="YingModel")
class YingModel:
    async def __init__(self, served: Optional[ServedModels], max_batch_size: int, batch_wait_timeout_s: float,
                       max_models: int, num_cpus: float):
        import torch

        served = _require_served(served)
        # As many math threads as CPUs reserved: more would fight the other replicas for the same cores.
        torch.set_num_threads(max(1, int(num_cpus)))
        self.checkpoints = served.checkpoints
        self.default = served.default
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.stats = BatchStats()  # all models of this replica

        async def load(model_id: str):
            if model_id not in self.checkpoints:
                raise KeyError(f"unknown model {model_id!r}; served: {sorted(self.checkpoints)}")
            engine = await asyncio.to_thread(load_engine, self.checkpoints[model_id], model_id, self.device)
            # Continuous batching: a request joins the model's running batch at its next token step
            # and leaves it when it ends (ying.serve.engine), rather than Serve's @serve.batch, whose
            # batches run to their longest request's end while the next requests wait.
            return ContinuousBatcher(engine, max_batch_size, batch_wait_timeout_s, self.stats)

        # Serve multiplexing: checkpoints load on first use and the least recently used is dropped
        # past `max_models`; the ingress routes a model's requests to replicas that hold it.
        self._get_model = serve.multiplexed(max_num_models_per_replica=max_models)(load)
        await self._get_model(self.default)  # ready to answer before the replica takes traffic

    async def _events(self, request: GenerationRequest, stream: bool, model_id: Optional[str] = None):
        """The request's events from its model's batcher: deltas (when ``stream``), then one finish."""
        batcher = await self._get_model(model_id or serve.get_multiplexed_model_id())
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        row = batcher.submit(request, lambda event: loop.call_soon_threadsafe(queue.put_nowait, event), stream)
        try:
            while True:
                events = [await queue.get()]
                while not queue.empty():
                    events.append(queue.get_nowait())
                deltas = "".join(e["delta"] for e in events if "delta" in e)
                if deltas:  # deltas that queued up meanwhile travel as one
                    yield {"delta": deltas}
                if "finish" in events[-1]:  # a row's finish is its last event
                    yield events[-1]
                    return
        finally:
            row.cancel()  # a caller that went away (a closed stream) frees its row at the next step

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        async for event in self._events(request, stream=False):
            if "finish" in event:
                return event["finish"]
        raise RuntimeError("the decoding loop ended without answering")  # _events always ends with a finish

    async def generate_stream(self, request: GenerationRequest):
        """Events for one request: ``{"delta": text}``..., then ``{"finish": GenerationResult}``."""
        async for event in self._events(request, stream=True):
            yield event

    async def batch_stats(self) -> dict:
        """Requests answered since the replica started, and the rows of each decoding step (histogram)."""
        return self.stats.as_dict()

    async def check_health(self) -> None:
        """Serve calls this periodically: the default model must answer a one-token request."""
        async for event in self._events(_health_request(), stream=False, model_id=self.default):
            if "finish" in event and event["finish"].error:
                raise RuntimeError(f"health check: {self.default} failed on a tiny input: {event['finish'].error}")


@serve.deployment(name="EvaluationRegistry")
class EvaluationDeployment(EvaluationRegistry):
    def __init__(self, cfg: YingConfig, served: Optional[ServedModels]):
        served = _require_served(served)
        super().__init__(cfg, served.data_dir, served.data_fingerprint, served.sources)
        import ying.eval.predictors  # noqa: F401  (imported now, not on the first request)


# ---- the HTTP ingress ------------------------------------------------------------------------

fastapi_app = FastAPI(title="Ying-VLM", version="1", docs_url=None, redoc_url=None,
                      description="OpenAI-compatible vision chat and evaluations for Ying-VLM checkpoints.")
fastapi_app.add_middleware(GuardMiddleware)


def _error_response(e: RequestError) -> JSONResponse:
    return JSONResponse(error_body(e.message, e.param, e.kind), status_code=e.status, headers=e.headers)


@fastapi_app.exception_handler(RequestError)
async def _on_request_error(request: Request, e: RequestError):
    return _error_response(e)


@fastapi_app.exception_handler(RequestValidationError)
async def _on_validation_error(request: Request, e: RequestValidationError):
    errors = e.errors()
    if errors and errors[0].get("type") == "json_invalid":
        return JSONResponse(error_body(f"the body is not valid JSON: {errors[0].get('ctx', {}).get('error', '')}"),
                            status_code=400)
    messages = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        # Pydantic names the union branch it tried (e.g. "str", "list[...]"): keep field names only.
        loc = [p for p in loc if not p.startswith(("list[", "str", "function-", "tagged-union[")) and "[" not in p]
        messages.append(f"{'.'.join(loc) or 'body'}: {err.get('msg', 'invalid')}")
    first = [str(p) for p in errors[0].get("loc", ()) if p != "body"] if errors else []
    first = [p for p in first if "[" not in p and not p.startswith(("str", "function-"))]
    return JSONResponse(error_body("; ".join(messages[:5]), ".".join(first) or None), status_code=400)


@fastapi_app.exception_handler(StarletteHTTPException)
async def _on_http_error(request: Request, e: StarletteHTTPException):
    return JSONResponse(error_body(str(e.detail)), status_code=e.status_code, headers=getattr(e, "headers", None))


def _backpressure(e: BackPressureError) -> RequestError:
    retry = e.retry_after_s if e.retry_after_s is not None else 1
    return RequestError(f"the server is at capacity ({e.message}); retry after {retry:g}s", None, status=503,
                        kind="server_overloaded", headers={"Retry-After": str(max(1, int(-(-retry // 1))))})


def _refuse_open_host_without_token(token: Optional[TokenDigest]) -> None:
    """A config file's http_options.host defaults to 0.0.0.0: without a token, refuse to come up."""
    if token is not None:
        return
    try:
        from ray.serve.context import _get_global_client

        host = _get_global_client().http_config.host
    except Exception:  # no controller to ask (not under Serve): nothing to check
        return
    if host and not is_loopback(host):
        raise RuntimeError(f"Serve's HTTP proxy listens on {host}, which is not loopback, and no bearer token is "
                           "set: set YING_SERVE_TOKEN (or serve.token_file) where the app is built, or bind 127.0.0.1")


@serve.deployment(name="YingIngress")
@serve.ingress(fastapi_app)
class YingIngress:
    def __init__(self, model_handle, registry_handle, cfg: YingConfig, served: Optional[ServedModels],
                 token: Optional[TokenDigest]):
        served = _require_served(served)
        s = cfg.serve
        _refuse_open_host_without_token(token)
        fastapi_app.state.guard = Guard(token, s.max_body_bytes)
        self.model_handle = model_handle
        self.registry = registry_handle
        self.cfg = cfg
        self.served = served
        self.created = int(time.time())
        self.limits = RequestLimits(max_images=s.max_images, max_image_pixels=s.max_image_pixels,
                                    max_tokens=s.max_tokens, default_max_tokens=s.default_max_tokens,
                                    image_url_allowlist=s.image_url_allowlist)
        self.model_limits = {name: read_model_limits(path) for name, path in served.checkpoints.items()}
        # Each model's processor (tokenizer and image preprocessing, no weights): prompts are encoded
        # here, so the model replica's decoding loop does only model work.
        self.preparers = {name: load_preparer(path) for name, path in served.checkpoints.items()}
        import ying.eval.suites  # noqa: F401  (imported now, not on the first evaluation request)

    def _model(self, name: Optional[str]) -> str:
        name = name or self.served.default
        if name not in self.served.checkpoints:
            raise RequestError(f"model: unknown model {name!r}; served models: {sorted(self.served.checkpoints)}",
                               "model", status=404, kind="model_not_found")
        return name

    def _model_card(self, name: str) -> dict:
        return {"id": name, "object": "model", "created": self.created, "owned_by": "ying"}

    @fastapi_app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "models": list(self.served.checkpoints), "default_model": self.served.default}

    @fastapi_app.get("/v1/models")
    async def list_models(self) -> dict:
        return {"object": "list", "data": [self._model_card(n) for n in self.served.checkpoints]}

    @fastapi_app.get("/v1/models/{model_id}")
    async def get_model(self, model_id: str) -> dict:
        return self._model_card(self._model(model_id))

    @fastapi_app.post("/v1/chat/completions")
    async def chat_completions(self, body: ChatCompletionRequest):
        model = self._model(body.model)
        gen, refs = parse_chat(body, self.limits, self.model_limits[model])
        raws = [ref.data if ref.data is not None else await self._fetch(ref.url, ref.param) for ref in refs]
        gen.images = raws
        # Full decodes (a truncated file fails with its own 400) and the prompt's encoding, CPU-bound,
        # run off the event loop.
        gen.prompt = await asyncio.to_thread(self._prepare, gen, raws, refs, model)
        handle = self.model_handle.options(multiplexed_model_id=model)
        if body.stream:
            return await self._stream(handle, gen, model, bool(body.stream_options and body.stream_options.include_usage))
        try:
            result: GenerationResult = await handle.generate.remote(gen)
        except BackPressureError as e:
            raise _backpressure(e) from None
        if result.error:
            logger.error("generation failed for one request: %s", result.error)
            return JSONResponse(error_body("generation failed on the server", None, "server_error"), status_code=500)
        return chat_completion(model, result)

    def _prepare(self, gen: GenerationRequest, raws: list, refs: list, model: str):
        for raw, ref in zip(raws, refs):
            decode_image(raw, ref.param, self.limits.max_image_pixels)
        try:
            return self.preparers[model].prepare(gen)
        except Exception as e:  # the images decoded, so this is unexpected: let the model side report it
            logger.warning("could not encode a request's prompt in the ingress: %s: %s", type(e).__name__, e)
            return None

    async def _stream(self, handle, gen: GenerationRequest, model: str, include_usage: bool):
        events = handle.options(stream=True).generate_stream.remote(gen)
        try:
            first = await events.__anext__()  # a full queue fails here, before any byte is sent
        except BackPressureError as e:
            raise _backpressure(e) from None
        chunk_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def sse(body: dict) -> str:
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        async def body():
            yield sse(chat_chunk(chunk_id, created, model, delta={"role": "assistant", "content": ""}))
            event = first
            while True:
                if "delta" in event:
                    yield sse(chat_chunk(chunk_id, created, model, delta={"content": event["delta"]}))
                else:
                    result: GenerationResult = event["finish"]
                    if result.error:
                        logger.error("generation failed for one streamed request: %s", result.error)
                        yield sse(error_body("generation failed on the server", None, "server_error"))
                    else:
                        yield sse(chat_chunk(chunk_id, created, model, finish_reason=result.finish_reason))
                        if include_usage:
                            yield sse(chat_chunk(chunk_id, created, model, usage=result))
                    break
                try:
                    event = await events.__anext__()
                except StopAsyncIteration:
                    break
            yield "data: [DONE]\n\n"

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _fetch(self, url: str, param: str) -> bytes:
        """An allow-listed image URL: no redirects (they could leave the allow-list), at most max_body_bytes."""
        import httpx

        limit = self.cfg.serve.max_body_bytes
        try:
            async with httpx.AsyncClient(follow_redirects=False, timeout=self.cfg.serve.image_fetch_timeout_s) as c:
                async with c.stream("GET", url) as r:
                    if r.status_code != 200:
                        raise RequestError(f"{param}: fetching the image answered HTTP {r.status_code}", param)
                    data = bytearray()
                    async for chunk in r.aiter_bytes():
                        data += chunk
                        if len(data) > limit:
                            raise RequestError(f"{param}: the image is over {limit} bytes (serve.max_body_bytes)", param)
        except httpx.HTTPError as e:
            raise RequestError(f"{param}: fetching the image failed: {type(e).__name__}", param) from None
        if not data:
            raise RequestError(f"{param}: the image is empty", param)
        return bytes(data)

    @fastapi_app.post("/v1/evaluations", status_code=202)
    async def start_evaluation(self, body: EvaluationRequest) -> dict:
        model = self._model(body.model)
        try:
            suite, tasks = resolve_suite(body.suite, list(self.cfg.data.tasks))
        except ValueError as e:
            raise RequestError(str(e), "suite") from None
        limit = body.limit or self.cfg.eval.max_per_task
        try:
            return await self.registry.submit.remote(model, self.served.checkpoints[model], suite, tasks, limit)
        except ValueError as e:
            raise RequestError(str(e), None, status=409) from None

    @fastapi_app.get("/v1/evaluations/{eval_id}")
    async def get_evaluation(self, eval_id: str) -> dict:
        state = await self.registry.get.remote(eval_id)
        if state is None:
            raise RequestError(f"eval_id: no evaluation {eval_id!r} (ids come from POST /v1/evaluations)",
                               "eval_id", status=404, kind="not_found")
        return state
