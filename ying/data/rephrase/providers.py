"""Providers: the offline template, and any OpenAI-compatible endpoint through the async ``openai`` client.

The OpenAI client's own retries are off (``max_retries=0``): ``LLMClient`` retries itself so that every
attempt books a slot with the shared limiter, and a 429's Retry-After pauses the whole cluster rather
than one coroutine. Retried: 429, 408, 409, 5xx, timeouts, connection errors and malformed responses
(a body that is not JSON, or a completion with no text). Not retried: other 4xx (a bad request stays bad).

The API key is read from the environment variable named by ``RephraseConfig.api_key_env`` in the
process that sends the requests (on a cluster: the workers' environment). It is never logged, stored
in a row, in meta, in the cache or in a manifest.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ying.config import RephraseConfig
from ying.data.rephrase.limiter import RateBudget, estimate_tokens
from ying.data.rephrase.prompt import (
    TEMPLATE_PROMPT_VERSION,
    RephraseItem,
    RephraseResult,
    build_prompt,
    check_rephrasing,
    clean_response,
    template_sentence,
)

__all__ = [
    "RephraseProvider",
    "TemplateProvider",
    "OpenAIProvider",
    "LLMClient",
    "Outcome",
    "Recorder",
    "LocalLimiter",
    "ActorLimiter",
    "judge",
    "make_provider",
]

log = logging.getLogger(__name__)


@runtime_checkable
class RephraseProvider(Protocol):
    name: str
    model: str
    prompt_version: str

    def rephrase(self, items: list[RephraseItem]) -> list[RephraseResult]: ...


class TemplateProvider:
    """Offline: every answer becomes the basic template sentence."""

    name = "template"
    model = "template"
    prompt_version = TEMPLATE_PROMPT_VERSION

    def rephrase(self, items: list[RephraseItem]) -> list[RephraseResult]:
        return [RephraseResult(template_sentence(it.answer, it.lang), "template") for it in items]


@dataclass
class Outcome:
    """What one prompt got: a text, or the kind of the last failure, or nothing (budget spent)."""

    text: str | None = None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    budget: bool = False


def judge(outcome: Outcome, item: RephraseItem) -> RephraseResult:
    """The row's outputs and status from an outcome: the rewrite if it passes the check, else the template."""
    fallback = template_sentence(item.answer, item.lang)
    if outcome.budget:
        return RephraseResult(fallback, "fallback:budget")
    if outcome.error is not None:
        return RephraseResult(fallback, f"fallback:error:{outcome.error}")
    text = clean_response(outcome.text)
    reason = check_rephrasing(text, item.answer)
    if reason is not None:
        return RephraseResult(fallback, f"fallback:{reason}")
    return RephraseResult(text, "rephrased")


@dataclass
class Recorder:
    """Per-batch tallies (merged into the stage totals) and, inside Ray, the ``ray.util.metrics`` counters."""

    emit_metrics: bool = False
    counts: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)

    def request(self, task: str) -> None:
        self.counts["requests"] += 1
        if self.emit_metrics:
            from ying import telemetry

            telemetry.rephrase_requests_counter().inc(1, tags={"task": task})

    def failure(self, task: str, kind: str) -> None:
        self.failures[kind] += 1
        if self.emit_metrics:
            from ying import telemetry

            telemetry.rephrase_failures_counter().inc(1, tags={"task": task, "reason": kind})

    def cache_hit(self, task: str) -> None:
        self.counts["cache_hits"] += 1
        if self.emit_metrics:
            from ying import telemetry

            telemetry.rephrase_cache_hits_counter().inc(1, tags={"task": task})

    def tokens(self, task: str, prompt_tokens: int, completion_tokens: int) -> None:
        self.counts["prompt_tokens"] += prompt_tokens
        self.counts["completion_tokens"] += completion_tokens
        if self.emit_metrics:
            from ying import telemetry

            if prompt_tokens:
                telemetry.rephrase_tokens_counter().inc(prompt_tokens, tags={"task": task, "kind": "prompt"})
            if completion_tokens:
                telemetry.rephrase_tokens_counter().inc(completion_tokens, tags={"task": task, "kind": "completion"})

    def take(self) -> dict[str, Any]:
        out = {"counts": dict(self.counts), "failures": dict(self.failures)}
        self.counts, self.failures = Counter(), Counter()
        return out


class LocalLimiter:
    """The limiter in this process (one provider used on its own, e.g. in tests or a notebook)."""

    def __init__(self, budget: RateBudget) -> None:
        self.budget = budget

    async def reserve(self, est_tokens: int) -> float | None:
        return self.budget.reserve(est_tokens)

    async def settle(self, est_tokens: int, used_tokens: int) -> None:
        self.budget.settle(est_tokens, used_tokens)

    async def pause(self, seconds: float) -> None:
        self.budget.pause(seconds)


class ActorLimiter:
    """The cluster's one ``RateLimiterActor``, seen from a rephrase actor."""

    def __init__(self, handle) -> None:
        self.handle = handle

    async def reserve(self, est_tokens: int) -> float | None:
        return await self.handle.reserve.remote(est_tokens)

    async def settle(self, est_tokens: int, used_tokens: int) -> None:
        self.handle.settle.remote(est_tokens, used_tokens)  # ordered after this caller's reserve

    async def pause(self, seconds: float) -> None:
        self.handle.pause.remote(seconds)


def _retry_after_s(headers) -> float | None:
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    try:
        if ms is not None:
            return max(0.0, float(ms) / 1000)
        s = headers.get("retry-after")
        return max(0.0, float(s)) if s is not None else None
    except ValueError:
        return None  # an HTTP date: rare from LLM APIs; fall back to our own backoff


class LLMClient:
    """Sends prompts with retries, backoff and the shared limiter; one per event loop."""

    RETRY_STATUSES = {408, 409, 429}

    def __init__(self, cfg: RephraseConfig, limiter, recorder: Recorder | None = None) -> None:
        import openai

        self.cfg = cfg
        self.limiter = limiter
        self.recorder = recorder or Recorder()
        # Local servers (vLLM, Ollama, a stub) accept any key; the real one only comes from the env.
        self.client = openai.AsyncOpenAI(
            base_url=cfg.base_url,
            api_key=os.environ.get(cfg.api_key_env) or "EMPTY",
            timeout=cfg.timeout_s,
            max_retries=0,
        )

    async def aclose(self) -> None:
        await self.client.close()

    def _classify(self, err: BaseException) -> tuple[str, bool, float | None]:
        """(failure kind, retry?, Retry-After seconds)."""
        import openai
        import pydantic

        if isinstance(err, openai.APITimeoutError):
            return "timeout", True, None
        if isinstance(err, openai.APIConnectionError):
            return "connection", True, None
        if isinstance(err, openai.APIStatusError):
            status = err.status_code
            retry = status in self.RETRY_STATUSES or status >= 500
            return f"http_{status}", retry, _retry_after_s(err.response.headers)
        if isinstance(err, (ValueError, pydantic.ValidationError, openai.APIResponseValidationError)):
            return "malformed", True, None
        return type(err).__name__.lower(), False, None

    async def complete(self, prompt: str, task: str = "") -> Outcome:
        cfg = self.cfg
        est = estimate_tokens(prompt, cfg.max_tokens)
        kind = "none"
        for attempt in range(cfg.max_retries + 1):
            wait = await self.limiter.reserve(est)
            if wait is None:
                return Outcome(budget=True)
            if wait > 0:
                await asyncio.sleep(wait)
            self.recorder.request(task)
            retry_after = None
            try:
                response = await self.client.chat.completions.create(
                    model=cfg.model,
                    temperature=cfg.temperature,
                    max_tokens=cfg.max_tokens,
                    messages=[{"role": "user", "content": prompt}],
                )
                choices = response.choices or []
                text = choices[0].message.content if choices else None
                if not isinstance(text, str):
                    raise ValueError("completion has no text")
                usage = response.usage
                p_tok = int(getattr(usage, "prompt_tokens", 0) or 0)
                c_tok = int(getattr(usage, "completion_tokens", 0) or 0)
                await self.limiter.settle(est, p_tok + c_tok)
                self.recorder.tokens(task, p_tok, c_tok)
                return Outcome(text=text, prompt_tokens=p_tok, completion_tokens=c_tok)
            except asyncio.CancelledError:
                await self.limiter.settle(est, 0)
                raise
            except Exception as err:  # every failure is classified; none escapes to kill the batch
                kind, retry, retry_after = self._classify(err)
                await self.limiter.settle(est, 0)
                self.recorder.failure(task, kind)
                if not retry or attempt == cfg.max_retries:
                    break
                if retry_after is not None and kind == "http_429":
                    await self.limiter.pause(retry_after)
                delay = min(cfg.backoff_max_s, cfg.backoff_s * 2**attempt) * random.uniform(0.5, 1.0)
                await asyncio.sleep(max(delay, retry_after or 0.0))
        log.warning("rephrase request failed after %d attempt(s) (%s); using the template", attempt + 1, kind)
        return Outcome(error=kind)


def _run_coroutine(coro):
    """Run ``coro`` to completion from sync code, also when the caller already has a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


class OpenAIProvider:
    """Any OpenAI-compatible chat endpoint, at most ``cfg.max_concurrency`` requests in flight.

    Used on its own (``rephrase``) it limits its rate in-process; the Ray stage shares one limiter
    actor across all its actors instead (``ying.data.rephrase.stage``).
    """

    name = "openai"

    def __init__(self, cfg: RephraseConfig) -> None:
        try:
            import openai  # noqa: F401
        except ImportError as e:  # pragma: no cover - openai is a dependency
            raise ImportError("OpenAIProvider needs the openai package: pip install openai") from e
        if cfg.max_concurrency < 1:
            raise ValueError(f"rephrase.max_concurrency must be >= 1, got {cfg.max_concurrency}")
        if cfg.max_retries < 0:
            raise ValueError(f"rephrase.max_retries must be >= 0, got {cfg.max_retries}")
        self.cfg = cfg
        self.model = cfg.model
        self.prompt_version = cfg.prompt_version

    async def arephrase(self, items: list[RephraseItem], client: LLMClient | None = None) -> list[RephraseResult]:
        own = client is None
        if own:
            client = LLMClient(self.cfg, LocalLimiter(RateBudget(self.cfg.rpm, self.cfg.tpm, self.cfg.budget_tokens,
                                                                 self.cfg.burst_s)))
        sem = asyncio.Semaphore(self.cfg.max_concurrency)

        async def one(item: RephraseItem) -> RephraseResult:
            async with sem:
                return judge(await client.complete(build_prompt(item)), item)

        try:
            return list(await asyncio.gather(*(one(it) for it in items)))
        finally:
            if own:
                await client.aclose()

    def rephrase(self, items: list[RephraseItem]) -> list[RephraseResult]:
        if not items:
            return []
        return _run_coroutine(self.arephrase(items))


def make_provider(cfg: RephraseConfig) -> RephraseProvider:
    """``auto`` means openai when ``base_url`` is set, else the offline template."""
    kind = cfg.provider
    if kind == "auto":
        kind = "openai" if cfg.base_url else "template"
    if kind == "template":
        return TemplateProvider()
    if kind == "openai":
        if not cfg.base_url and cfg.provider == "openai" and not os.environ.get(cfg.api_key_env):
            raise ValueError(
                f"rephrase.provider=openai with no base_url talks to api.openai.com and needs the key in "
                f"${cfg.api_key_env}; set that variable, or set rephrase.base_url to a local server, "
                f"or use rephrase.provider=template"
            )
        return OpenAIProvider(cfg)
    raise ValueError(f"unknown rephrase.provider {cfg.provider!r}")
