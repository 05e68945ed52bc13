"""One rate limit for the whole cluster: requests/min, tokens/min, Retry-After pauses, a token budget.

``RateBudget`` is the plain algorithm (GCRA, the "virtual scheduling" form of a token bucket): every
``reserve`` books the earliest slot at which one more request fits under both the requests/min and
the tokens/min rate, allowing ``burst_s`` seconds of burst, and returns how long the caller sleeps
before sending. Booking rather than polling means one call per request and no thundering herd.
``RateLimiterActor`` is the same object as a Ray actor, so every rephrase actor on every node shares
one limit; it also keeps the stage's running tallies for progress and the manifest.

Tokens/min counts an estimate when booking (prompt characters / 4 + ``max_tokens``) and is corrected
with the response's ``usage`` in ``settle``. The budget counts settled tokens plus the estimates of
requests in flight, so concurrent requests cannot overshoot it by more than their estimates.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from typing import Any, Callable

__all__ = ["RateBudget", "StageTally", "RateLimiterActor", "estimate_tokens"]


def estimate_tokens(prompt: str, max_tokens: int) -> int:
    return len(prompt) // 4 + max_tokens


class RateBudget:
    def __init__(
        self,
        rpm: float | None,
        tpm: float | None = None,
        budget_tokens: int | None = None,
        burst_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        for name, value in (("rpm", rpm), ("tpm", tpm), ("budget_tokens", budget_tokens)):
            if value is not None and value <= 0:
                raise ValueError(f"rephrase.{name} must be > 0 or unset, got {value}")
        self.rpm, self.tpm, self.budget_tokens = rpm, tpm, budget_tokens
        self.clock = clock
        now = clock()
        self._req_interval = 60.0 / rpm if rpm else 0.0
        self._tok_interval = 60.0 / tpm if tpm else 0.0
        # Burst tolerance: how far ahead of the steady schedule a request may go.
        self._req_tau = max(0.0, burst_s - self._req_interval) if rpm else 0.0
        self._tok_tau = burst_s if tpm else 0.0
        self._req_tat = now  # theoretical arrival time of the next request
        self._tok_tat = now
        self.paused_until = now
        self.spent_tokens = 0
        self.in_flight_estimate = 0
        self.budget_refused = 0

    def reserve(self, est_tokens: int) -> float | None:
        """Seconds to wait before sending one request of about ``est_tokens``; None: budget spent."""
        if self.budget_tokens is not None and self.spent_tokens + self.in_flight_estimate + est_tokens > self.budget_tokens:
            self.budget_refused += 1
            return None
        now = self.clock()
        start = max(now, self.paused_until, self._req_tat - self._req_tau, self._tok_tat - self._tok_tau)
        self._req_tat = max(self._req_tat, start) + self._req_interval
        self._tok_tat = max(self._tok_tat, start) + est_tokens * self._tok_interval
        self.in_flight_estimate += est_tokens
        return start - now

    def settle(self, est_tokens: int, used_tokens: int) -> None:
        """A booked request finished; ``used_tokens`` from its usage (0 when it failed)."""
        self.in_flight_estimate = max(0, self.in_flight_estimate - est_tokens)
        self.spent_tokens += used_tokens
        self._tok_tat += (used_tokens - est_tokens) * self._tok_interval

    def pause(self, seconds: float) -> None:
        """The provider said Retry-After: nobody in the cluster sends before then."""
        self.paused_until = max(self.paused_until, self.clock() + seconds)


class StageTally:
    """Running totals of one stage run, merged from every actor's per-batch tallies."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, window_s: float = 10.0) -> None:
        self.clock = clock
        self.window_s = window_s
        self.started = clock()
        self.counts: Counter = Counter()  # rows, requests, cache_hits, prompt_tokens, completion_tokens, ...
        self.failures: Counter = Counter()  # failure kind -> n (every failed attempt, retried or not)
        self.by_status: Counter = Counter()
        self._sends: deque[float] = deque()

    def note_send(self, at: float) -> None:
        self._sends.append(at)

    def add(self, tally: dict[str, Any]) -> None:
        self.counts.update(tally.get("counts", {}))
        self.failures.update(tally.get("failures", {}))
        self.by_status.update(tally.get("by_status", {}))

    def rate_per_s(self) -> float:
        """Requests booked per second over the last ``window_s`` seconds."""
        now = self.clock()
        while self._sends and self._sends[0] < now - self.window_s:
            self._sends.popleft()
        span = min(self.window_s, max(now - self.started, 1e-9))
        return sum(1 for t in self._sends if t <= now) / span

    def snapshot(self) -> dict[str, Any]:
        return {
            "counts": dict(self.counts),
            "failures": dict(sorted(self.failures.items())),
            "by_status": dict(sorted(self.by_status.items())),
            "rate_per_s": round(self.rate_per_s(), 3),
            "seconds": round(self.clock() - self.started, 3),
        }


class RateLimiterActor:
    """``RateBudget`` + ``StageTally`` behind one Ray actor (created with ``ray.remote`` by the stage)."""

    def __init__(self, rpm: float | None, tpm: float | None, budget_tokens: int | None, burst_s: float = 1.0) -> None:
        self.budget = RateBudget(rpm, tpm, budget_tokens, burst_s)
        self.tally = StageTally()

    def reserve(self, est_tokens: int) -> float | None:
        wait = self.budget.reserve(est_tokens)
        if wait is not None:
            self.tally.note_send(self.budget.clock() + wait)
        return wait

    def settle(self, est_tokens: int, used_tokens: int) -> None:
        self.budget.settle(est_tokens, used_tokens)

    def pause(self, seconds: float) -> None:
        self.budget.pause(seconds)

    def add_tally(self, tally: dict[str, Any]) -> None:
        self.tally.add(tally)

    def stats(self) -> dict[str, Any]:
        snap = self.tally.snapshot()
        snap["spent_tokens"] = self.budget.spent_tokens
        snap["budget_refused"] = self.budget.budget_refused
        return snap
