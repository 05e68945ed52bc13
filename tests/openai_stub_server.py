"""A real OpenAI-compatible chat-completions server on loopback, for tests and benchmarks.

It answers deterministically: the answer on the "Answer:" line after the last "Question:" of the
prompt is embedded in a sentence. It records every request (body, Authorization header, HTTP status,
arrival time), and it can be made to behave like a busy provider:

- ``latency_s``: every answer takes this long (an asyncio sleep, so requests overlap);
- ``rpm_cap``: a token bucket of ``rpm_cap`` requests per minute (``burst_s`` seconds of burst);
  a request beyond it gets 429 with ``Retry-After`` / ``retry-after-ms`` saying when to come back;
- ``faults``: rates of injected faults, e.g. ``{"429": 0.04, "500": 0.04, "timeout": 0.04,
  "malformed": 0.04, "refusal": 0.04}``: 429 with Retry-After ``fault_retry_after_s``, a 500, an
  answer only after ``timeout_sleep_s`` (longer than the client's timeout), a 200 whose body is cut-off
  JSON, or a refusal sentence;
- ``refuse_answers`` / ``fail_with_500``: deterministic refusals for chosen answers / always 500;
- ``delay_answers``: {answer: seconds}: these answers come that much later (a slow row);
- ``retry_after_date``: 429s say when to come back as an HTTP date (``Retry-After: <IMF-fixdate>``)
  instead of seconds, with no ``retry-after-ms``;
- ``reply``: a function (answer, prompt) -> completion text, instead of the default sentence;
- ``first_429s``: the first N requests get a 429 with Retry-After ``fault_retry_after_s``;
- ``hold_answers``: answers held back until ``release_held()`` (a row that is slow for as long as a
  test needs, without a timer).

``sent_prompts()`` / ``answered_prompts()`` count, per prompt, the requests that reached the server /
that it answered: the benchmark's "paid twice" is measured here, not by the client.

    with OpenAIStubServer(latency_s=0.2, rpm_cap=1200) as stub:
        client = openai.OpenAI(base_url=stub.base_url, api_key="k")
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
import uuid
from collections import Counter
from email.utils import formatdate
from typing import Callable

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

REFUSAL_TEXT = "Sorry, I cannot determine that from the image."
FAULT_KINDS = ("429", "500", "timeout", "malformed", "refusal")


def answer_from_prompt(prompt: str) -> str:
    last = prompt.rsplit("Question:", 1)[-1]
    for line in last.splitlines():
        if line.startswith("Answer:"):
            return line[len("Answer:"):].strip()
    return ""


class OpenAIStubServer:
    def __init__(
        self,
        refuse_answers: set[str] | None = None,
        fail_with_500: bool = False,
        latency_s: float = 0.0,
        rpm_cap: float | None = None,
        burst_s: float = 1.0,
        faults: dict[str, float] | None = None,
        fault_retry_after_s: float = 1.0,
        timeout_sleep_s: float = 5.0,
        seed: int = 0,
        delay_answers: dict[str, float] | None = None,
        retry_after_date: bool = False,
        reply: Callable[[str, str], str] | None = None,
        first_429s: int = 0,
        hold_answers: set[str] | None = None,
    ) -> None:
        unknown = set(faults or {}) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {FAULT_KINDS}")
        if sum((faults or {}).values()) > 1:
            raise ValueError(f"fault rates add up to more than 1: {faults}")
        self.refuse_answers = set(refuse_answers or ())
        self.fail_with_500 = fail_with_500
        self.latency_s = latency_s
        self.rpm_cap = rpm_cap
        self.burst_s = burst_s
        self.faults = dict(faults or {})
        self.fault_retry_after_s = fault_retry_after_s
        self.timeout_sleep_s = timeout_sleep_s
        self.delay_answers = dict(delay_answers or {})
        self.retry_after_date = retry_after_date
        self.reply = reply
        self.first_429s = first_429s
        self.hold_answers = set(hold_answers or ())
        self._released = threading.Event()
        self._rng = random.Random(seed)
        # every request: {"body", "authorization", "status", "t", "prompt", "fault"}
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._bucket = None if rpm_cap is None else max(1.0, rpm_cap / 60 * burst_s)
        self._bucket_t = time.monotonic()
        self.app = self._make_app()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- what tests and benchmarks read ---------------------------------------------------------

    def answered_prompts(self) -> Counter:
        """prompt -> how many times it got a 200 with a well-formed answer."""
        with self._lock:
            return Counter(r["prompt"] for r in self.requests if r["status"] == 200 and r["fault"] is None)

    def release_held(self) -> None:
        self._released.set()

    def sent_prompts(self) -> Counter:
        """prompt -> how many requests carrying it reached the server (any status)."""
        with self._lock:
            return Counter(r["prompt"] for r in self.requests)

    def count(self, status: int | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if status is None or r["status"] == status)

    # -- the server -------------------------------------------------------------------------------

    def _take_rate_token(self) -> float | None:
        """None when the request is within the cap, else the seconds until a token is free."""
        if self.rpm_cap is None:
            return None
        rate = self.rpm_cap / 60.0
        capacity = max(1.0, rate * self.burst_s)
        with self._lock:
            now = time.monotonic()
            self._bucket = min(capacity, self._bucket + (now - self._bucket_t) * rate)
            self._bucket_t = now
            if self._bucket >= 1.0:
                self._bucket -= 1.0
                return None
            return (1.0 - self._bucket) / rate

    def _pick_fault(self) -> str | None:
        with self._lock:
            x = self._rng.random()
        acc = 0.0
        for kind in FAULT_KINDS:
            acc += self.faults.get(kind, 0.0)
            if x < acc:
                return kind
        return None

    def _record(self, body: dict, request: Request, prompt: str) -> dict:
        entry = {"body": body, "authorization": request.headers.get("authorization"), "status": None,
                 "t": time.monotonic(), "prompt": prompt, "fault": None}
        with self._lock:
            self.requests.append(entry)
        return entry

    def _make_app(self) -> FastAPI:
        app = FastAPI()

        def error(entry: dict, status: int, message: str, headers: dict | None = None) -> JSONResponse:
            entry["status"] = status
            kind = "rate_limit_exceeded" if status == 429 else "server_error"
            return JSONResponse(status_code=status, headers=headers,
                                content={"error": {"message": message, "type": kind, "code": None}})

        def retry_after_headers(seconds: float) -> dict:
            if self.retry_after_date:  # whole seconds, rounded up so that the date is never early
                return {"retry-after": formatdate(math.ceil(time.time() + seconds), usegmt=True)}
            return {"retry-after": str(max(1, math.ceil(seconds))), "retry-after-ms": str(int(seconds * 1000))}

        @app.post("/v1/chat/completions")
        async def chat_completions(request: Request):
            body = await request.json()
            prompt = "\n".join(
                m["content"] if isinstance(m.get("content"), str) else "" for m in body.get("messages", [])
            )
            entry = self._record(body, request, prompt)
            with self._lock:
                scripted_429 = len(self.requests) <= self.first_429s
            if scripted_429:
                entry["fault"] = "429"
                return error(entry, 429, "Rate limit reached (scripted)", retry_after_headers(self.fault_retry_after_s))
            wait = self._take_rate_token()
            if wait is not None:
                entry["fault"] = "rate_cap"
                return error(entry, 429, "Rate limit reached for requests", retry_after_headers(wait))
            if self.fail_with_500:
                return error(entry, 500, "stub failure")
            fault = self._pick_fault()
            entry["fault"] = fault
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            if fault == "429":
                return error(entry, 429, "Rate limit reached (injected)", retry_after_headers(self.fault_retry_after_s))
            if fault == "500":
                return error(entry, 500, "injected server error")
            if fault == "timeout":
                await asyncio.sleep(self.timeout_sleep_s)
            if fault == "malformed":
                entry["status"] = 200
                return Response(content=b'{"id": "chatcmpl-broken", "choices": [{"index": 0, "mess',
                                media_type="application/json")
            answer = answer_from_prompt(prompt)
            if answer in self.delay_answers:
                await asyncio.sleep(self.delay_answers[answer])
            held_until = time.monotonic() + 300  # a safety net: a broken test fails instead of hanging
            while answer in self.hold_answers and not self._released.is_set() and time.monotonic() < held_until:
                await asyncio.sleep(0.05)
            if fault == "refusal" or answer in self.refuse_answers:
                content = REFUSAL_TEXT
            elif self.reply is not None:
                content = self.reply(answer, prompt)
            elif any("\u4e00" <= ch <= "\u9fff" for ch in answer):
                content = f"根据图片，答案是{answer}。"
            else:
                content = f"Looking at the image, the answer is {answer}."
            prompt_tokens = len(prompt.split())
            completion_tokens = len(content.split())
            entry["status"] = 200
            return {
                "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "stub"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }

        return app

    def start(self) -> "OpenAIStubServer":
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning", lifespan="off",
                                backlog=4096, timeout_keep_alive=30)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="openai-stub", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("openai stub server did not start within 10 s")
            time.sleep(0.02)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "OpenAIStubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
