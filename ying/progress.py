"""One progress line per long step: done, total, rate, ETA. No progress-bar control codes.

A stage that processes N things makes a ``ProgressLine`` and calls ``update`` as work finishes;
a line is printed at most every ``interval_s`` seconds, and once more by ``finish``:

    [ying] unify: 1,200/8,072 records (14.9%), 412/s, ETA 17s

    progress = ProgressLine("unify", total=8072, unit="records")
    for chunk in chunks:
        ...
        progress.update(len(chunk))
    progress.finish()

``extra`` (a callable returning a short string) appends live details, e.g. rejects so far.
Thread-safe: a Ray Data callback thread and the driver may both update it.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Callable, TextIO

__all__ = ["ProgressLine", "format_duration"]


def format_duration(seconds: float) -> str:
    """``75`` -> ``"1m15s"``; ``3725`` -> ``"1h02m"``; short and stable for log lines."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


class ProgressLine:
    def __init__(self, label: str, total: int | None, unit: str = "items", interval_s: float = 5.0,
                 extra: Callable[[], str] | None = None, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.interval_s = interval_s
        self.extra = extra
        self.stream = stream
        self._clock = clock
        self._lock = threading.Lock()
        self.done = 0
        self._started = clock()
        self._last_print = self._started
        # (time, done) at the first progress: the ETA uses the rate since then, so a slow start-up
        # (actors starting, a model loading) does not promise hours for work that takes seconds.
        self._first: tuple[float, int] | None = None

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
            now = self._clock()
            if self._first is None and self.done > 0:
                self._first = (now, self.done)
            if now - self._last_print < self.interval_s:
                return
            self._last_print = now
        self._print(now)

    def set(self, done: int) -> None:
        """For callers that know the absolute count (e.g. polled from an actor)."""
        with self._lock:
            self.done = done
        self.update(0)

    def finish(self) -> None:
        self._print(self._clock(), final=True)

    def line(self, now: float | None = None, final: bool = False) -> str:
        now = self._clock() if now is None else now
        elapsed = max(now - self._started, 1e-9)
        rate = self.done / elapsed
        if self.total:
            head = f"{self.done:,}/{self.total:,} {self.unit} ({100 * self.done / self.total:.1f}%)"
        else:
            head = f"{self.done:,} {self.unit}"
        parts = [head, f"{rate:,.1f}/s" if rate < 100 else f"{rate:,.0f}/s"]
        if final:
            parts.append(f"in {format_duration(elapsed)}")
        elif self.total and self._first is not None and now > self._first[0] and self.done > self._first[1]:
            steady = (self.done - self._first[1]) / (now - self._first[0])
            parts.append(f"ETA {format_duration((self.total - self.done) / steady)}")
        if self.extra is not None:
            try:
                detail = self.extra()
            except Exception:  # a detail is best effort; progress never fails the work
                detail = ""
            if detail:
                parts.append(detail)
        return f"[ying] {self.label}: " + ", ".join(parts)

    def _print(self, now: float, final: bool = False) -> None:
        print(self.line(now, final), file=self.stream or sys.stdout, flush=True)
