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
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Protocol, runtime_checkable

from ying.config import RephraseConfig
from ying.data.rephrase.limiter import Booking, RateBudget, estimate_prompt_tokens
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
    "retry_after_s",
    "limiter_args",
    "budget_for",
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
    """The row's outputs and status from an outcome: the rewrite if it passes the check, else the template.

    The check wants the adapter's original answer (``item.expected``) and lets the rewrite quote what
    the LLM was shown (``item.sources``); the template sentence is built from the record's target."""
    fallback = template_sentence(item.answer, item.lang)
    if outcome.budget:
        return RephraseResult(fallback, "fallback:budget")
    if outcome.error is not None:
        return RephraseResult(fallback, f"fallback:error:{outcome.error}")
    text = clean_response(outcome.text)
    reason = check_rephrasing(text, item.expected, item.sources)
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

    def deduped(self, task: str) -> None:
        """A prompt another row of this run is already waiting for: its answer is shared, not paid again."""
        self.counts["deduped"] += 1

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

    async def reserve(self, est_prompt: int, est_completion: int) -> Booking | None:
        return self.budget.reserve(est_prompt, est_completion)

    async def rebook(self, est_prompt: int, est_completion: int) -> Booking:
        return self.budget.rebook(est_prompt, est_completion)

    def pause_left_since(self, booking: Booking, booked_at: float) -> float:
        return self.budget.pause_left_since(booking.epoch)

    async def settle(self, est_prompt: int, est_completion: int, used_prompt: int, used_completion: int) -> None:
        self.budget.settle(est_prompt, est_completion, used_prompt, used_completion)

    async def pause(self, seconds: float) -> None:
        self.budget.pause(seconds)


class ActorLimiter:
    """The cluster's one ``RateLimiterActor``, seen from one actor.

    It mirrors the latest pause locally, from every booking's reply and from this actor's own 429s,
    so a request that slept towards its slot re-checks for a pause without another round trip.
    Clocks differ between nodes: the mirror keeps this process's time of learning, not the limiter's.
    """

    def __init__(self, handle, clock=time.monotonic) -> None:
        self.handle = handle
        self.clock = clock
        self._epoch_seen = 0
        self._pause_learned_at = float("-inf")
        self._pause_until = float("-inf")

    def _learn(self, booking: Booking) -> Booking:
        if booking.epoch > self._epoch_seen:
            self._epoch_seen = booking.epoch
            now = self.clock()
            self._pause_learned_at = now
            self._pause_until = max(self._pause_until, now + booking.pause_left)
        return booking

    async def reserve(self, est_prompt: int, est_completion: int) -> Booking | None:
        booking = await self.handle.reserve.remote(est_prompt, est_completion)
        return None if booking is None else self._learn(Booking(*booking))

    async def rebook(self, est_prompt: int, est_completion: int) -> Booking:
        return self._learn(Booking(*await self.handle.rebook.remote(est_prompt, est_completion)))

    def pause_left_since(self, booking: Booking, booked_at: float) -> float:
        if self._pause_learned_at <= booked_at:
            return 0.0
        return max(0.0, self._pause_until - self.clock())

    async def settle(self, est_prompt: int, est_completion: int, used_prompt: int, used_completion: int) -> None:
        self.handle.settle.remote(est_prompt, est_completion, used_prompt, used_completion)  # after our reserve

    async def pause(self, seconds: float) -> None:
        now = self.clock()
        self._pause_learned_at = now
        self._pause_until = max(self._pause_until, now + seconds)
        self._epoch_seen = max(self._epoch_seen, await self.handle.pause.remote(seconds))


def limiter_args(cfg: RephraseConfig) -> dict[str, Any]:
    """``RateBudget`` / ``RateLimiterActor`` keyword arguments from the config (prices included)."""
    price = cfg.price()
    return {"rpm": cfg.rpm, "tpm": cfg.tpm, "budget_tokens": cfg.budget_tokens, "burst_s": cfg.burst_s,
            "budget_usd": cfg.budget_usd,
            "usd_per_1m": None if price is None else (price.prompt_per_1m, price.completion_per_1m)}


def budget_for(cfg: RephraseConfig) -> RateBudget:
    return RateBudget(**limiter_args(cfg))


def retry_after_s(headers, now: datetime | None = None) -> float | None:
    """Seconds the server asked us to wait: ``retry-after-ms``, or ``Retry-After`` as seconds or an HTTP date."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:  # RFC 9110: Retry-After: Fri, 31 Dec 1999 23:59:59 GMT
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        log.warning("unreadable Retry-After header %r; using our own backoff", value)
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


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
            return f"http_{status}", retry, retry_after_s(err.response.headers)
        if isinstance(err, (ValueError, pydantic.ValidationError, openai.APIResponseValidationError)):
            return "malformed", True, None
        return type(err).__name__.lower(), False, None

    async def _wait_for_slot(self, booking: Booking, est_prompt: int, est_completion: int) -> None:
        """Sleep until the booked slot; if a pause announced meanwhile covers it, book again after the pause."""
        while True:
            booked_at = time.monotonic()
            if booking.wait > 0:
                await asyncio.sleep(booking.wait)
            if self.limiter.pause_left_since(booking, booked_at) <= 0:
                return
            booking = await self.limiter.rebook(est_prompt, est_completion)

    async def complete(self, prompt: str, task: str = "") -> Outcome:
        cfg = self.cfg
        est_prompt, est_completion = estimate_prompt_tokens(prompt), cfg.max_tokens
        kind = "none"
        for attempt in range(cfg.max_retries + 1):
            booking = await self.limiter.reserve(est_prompt, est_completion)
            if booking is None:
                return Outcome(budget=True)
            try:
                await self._wait_for_slot(booking, est_prompt, est_completion)
            except asyncio.CancelledError:
                await self.limiter.settle(est_prompt, est_completion, 0, 0)
                raise
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
                await self.limiter.settle(est_prompt, est_completion, p_tok, c_tok)
                self.recorder.tokens(task, p_tok, c_tok)
                return Outcome(text=text, prompt_tokens=p_tok, completion_tokens=c_tok)
            except asyncio.CancelledError:
                await self.limiter.settle(est_prompt, est_completion, 0, 0)
                raise
            except Exception as err:  # every failure is classified; none escapes to kill the batch
                kind, retry, retry_after = self._classify(err)
                await self.limiter.settle(est_prompt, est_completion, 0, 0)
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
            client = LLMClient(self.cfg, LocalLimiter(budget_for(self.cfg)))
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
