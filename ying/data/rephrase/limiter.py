"""One rate limit for the whole cluster: requests/min, tokens/min, Retry-After pauses, a budget in tokens or money.

``RateBudget`` is the plain algorithm (GCRA, the "virtual scheduling" form of a token bucket): every
``reserve`` books the earliest slot at which one more request fits under both the requests/min and
the tokens/min rate, allowing ``burst_s`` seconds of burst, and returns how long the caller sleeps
before sending. Booking rather than polling means one call per request and no thundering herd.
``RateLimiterActor`` is the same object as a Ray actor, so every rephrase actor on every node shares
one limit; it also keeps the stage's running tallies for progress and the manifest.

Pauses: a 429's Retry-After ``pause``\\s everyone. A request booked before the pause may be sleeping
towards a slot inside it; every booking carries the pause ``epoch`` it was made in, and the client
checks, just before it fires, whether a later pause covers the present moment (``pause_left_since``);
if so it ``rebook``\\s a slot after the pause instead of firing into it. Rebooking spends no budget.

Tokens/min and the budgets count an estimate when booking (prompt characters / 4 as prompt tokens,
``max_tokens`` as completion tokens, priced per model) and are corrected with the response's
``usage`` in ``settle``. The budgets count settled spending plus the estimates of requests in flight,
so concurrent requests cannot overshoot a budget by more than their estimates.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from typing import Any, Callable, NamedTuple

__all__ = ["Booking", "RateBudget", "StageTally", "RateLimiterActor", "estimate_prompt_tokens"]


def estimate_prompt_tokens(prompt: str) -> int:
    return len(prompt) // 4


class Booking(NamedTuple):
    wait: float  # seconds to sleep before sending
    epoch: int  # the pause epoch the booking was made in
    pause_left: float  # seconds of the current pause still to run (0: none), for callers that mirror it


class RateBudget:
    def __init__(
        self,
        rpm: float | None,
        tpm: float | None = None,
        budget_tokens: int | None = None,
        burst_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        budget_usd: float | None = None,
        usd_per_1m: tuple[float, float] | None = None,  # (prompt, completion) price per million tokens
    ) -> None:
        for name, value in (("rpm", rpm), ("tpm", tpm), ("budget_tokens", budget_tokens), ("budget_usd", budget_usd)):
            if value is not None and value <= 0:
                raise ValueError(f"rephrase.{name} must be > 0 or unset, got {value}")
        if budget_usd is not None and usd_per_1m is None:
            raise ValueError("rephrase.budget_usd needs the model's price (rephrase.prices)")
        self.rpm, self.tpm, self.budget_tokens, self.budget_usd = rpm, tpm, budget_tokens, budget_usd
        self._usd_in, self._usd_out = ((usd_per_1m[0] / 1e6, usd_per_1m[1] / 1e6) if usd_per_1m else (0.0, 0.0))
        self.priced = usd_per_1m is not None
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
        self.epoch = 0
        self.spent_tokens = 0
        self.spent_usd = 0.0
        self.in_flight_tokens = 0
        self.in_flight_usd = 0.0
        self.budget_refused = 0

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return prompt_tokens * self._usd_in + completion_tokens * self._usd_out

    def _over_budget(self, tokens: int, usd: float) -> bool:
        if self.budget_tokens is not None and self.spent_tokens + self.in_flight_tokens + tokens > self.budget_tokens:
            return True
        return self.budget_usd is not None and self.spent_usd + self.in_flight_usd + usd > self.budget_usd + 1e-12

    def _book(self, tokens: int) -> float:
        now = self.clock()
        start = max(now, self.paused_until, self._req_tat - self._req_tau, self._tok_tat - self._tok_tau)
        self._req_tat = max(self._req_tat, start) + self._req_interval
        self._tok_tat = max(self._tok_tat, start) + tokens * self._tok_interval
        return start - now

    def pause_left(self) -> float:
        return max(0.0, self.paused_until - self.clock())

    def reserve(self, est_prompt: int, est_completion: int = 0) -> Booking | None:
        """A slot for one request of about these token counts; None: a budget is spent."""
        tokens, usd = est_prompt + est_completion, self.cost(est_prompt, est_completion)
        if self._over_budget(tokens, usd):
            self.budget_refused += 1
            return None
        self.in_flight_tokens += tokens
        self.in_flight_usd += usd
        return Booking(self._book(tokens), self.epoch, self.pause_left())

    def rebook(self, est_prompt: int, est_completion: int = 0) -> Booking:
        """A new slot for a request already reserved (its booking fell inside a later pause)."""
        return Booking(self._book(est_prompt + est_completion), self.epoch, self.pause_left())

    def pause_left_since(self, epoch: int) -> float:
        """Seconds of a pause announced after ``epoch`` that are still to run (0: free to send)."""
        return self.pause_left() if self.epoch > epoch else 0.0

    def settle(self, est_prompt: int, est_completion: int, used_prompt: int, used_completion: int) -> None:
        """A booked request finished; ``used_*`` from its usage (0 when it failed)."""
        est_tokens, used_tokens = est_prompt + est_completion, used_prompt + used_completion
        self.in_flight_tokens = max(0, self.in_flight_tokens - est_tokens)
        self.in_flight_usd = max(0.0, self.in_flight_usd - self.cost(est_prompt, est_completion))
        self.spent_tokens += used_tokens
        self.spent_usd += self.cost(used_prompt, used_completion)
        self._tok_tat += (used_tokens - est_tokens) * self._tok_interval

    def pause(self, seconds: float) -> int:
        """The provider said Retry-After: nobody in the cluster sends before then. Returns the epoch."""
        until = self.clock() + seconds
        if until > self.paused_until:
            self.paused_until = until
            self.epoch += 1
            # New bookings are spaced from the end of the pause, not piled up on it.
            self._req_tat = max(self._req_tat, until)
        return self.epoch


class StageTally:
    """Running totals of one stage run, merged from every actor's tallies."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, window_s: float = 10.0) -> None:
        self.clock = clock
        self.window_s = window_s
        self.started = clock()
        # rows, requests, cache_hits, deduped, prompt_tokens, completion_tokens, ...
        self.counts: Counter = Counter()
        self.failures: Counter = Counter()  # failure kind -> n (every failed attempt, retried or not)
        self.gauges: dict[str, float] = {}  # latest value per name, e.g. rows awaited at each owner
        self._sends: deque[float] = deque()

    def note_send(self, at: float) -> None:
        self._sends.append(at)

    def add(self, tally: dict[str, Any]) -> None:
        self.counts.update(tally.get("counts", {}))
        self.failures.update(tally.get("failures", {}))
        self.gauges.update(tally.get("gauges", {}))

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
            "pending": int(sum(v for k, v in self.gauges.items() if k.startswith("pending_"))),
            "rate_per_s": round(self.rate_per_s(), 3),
            "seconds": round(self.clock() - self.started, 3),
        }


class RateLimiterActor:
    """``RateBudget`` + ``StageTally`` behind one Ray actor (created with ``ray.remote`` by the stage)."""

    def __init__(self, rpm: float | None, tpm: float | None, budget_tokens: int | None, burst_s: float = 1.0,
                 budget_usd: float | None = None, usd_per_1m: tuple[float, float] | None = None) -> None:
        self.budget = RateBudget(rpm, tpm, budget_tokens, burst_s, budget_usd=budget_usd, usd_per_1m=usd_per_1m)
        self.tally = StageTally()

    def reserve(self, est_prompt: int, est_completion: int) -> Booking | None:
        booking = self.budget.reserve(est_prompt, est_completion)
        if booking is not None:
            self.tally.note_send(self.budget.clock() + booking.wait)
        return booking

    def rebook(self, est_prompt: int, est_completion: int) -> Booking:
        return self.budget.rebook(est_prompt, est_completion)  # its send was noted when first booked

    def settle(self, est_prompt: int, est_completion: int, used_prompt: int, used_completion: int) -> None:
        self.budget.settle(est_prompt, est_completion, used_prompt, used_completion)

    def pause(self, seconds: float) -> int:
        return self.budget.pause(seconds)

    def add_tally(self, tally: dict[str, Any]) -> None:
        self.tally.add(tally)

    def stats(self) -> dict[str, Any]:
        snap = self.tally.snapshot()
        snap["spent_tokens"] = self.budget.spent_tokens
        snap["spent_usd"] = round(self.budget.spent_usd, 6) if self.budget.priced else None
        snap["budget_refused"] = self.budget.budget_refused
        return snap
