"""A small OpenAI-compatible judge on loopback, for the LLM-judge tests (real HTTP, real client).

It reads the Table 13 prompt it is sent and answers like a judge: an assistant whose answer
contains the reference answer scores 9, any other 3; ``first_bonus`` is added to Assistant 1 (a
position bias, which the order swap must cancel). Video QA prompts get "yes" when the predicted
answer contains the correct one. A prompt containing ``FAIL`` gets HTTP 500; one containing
``GARBLE`` gets prose with no scores.
"""

from __future__ import annotations

import re
import threading
import time
import uuid

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


def _block(prompt: str, start: str, end: str) -> str:
    m = re.search(re.escape(start) + r"\n(.*?)\n" + re.escape(end), prompt, re.S)
    return m.group(1).strip() if m else ""


class JudgeStubServer:
    def __init__(self, first_bonus: int = 0) -> None:
        self.first_bonus = first_bonus
        self.requests: list[dict] = []  # {"prompt", "temperature", "model", "authorization", "status"}
        self._lock = threading.Lock()
        self.app = self._make_app()
        self._server: uvicorn.Server | None = None
        self.port: int | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def reply(self, prompt: str) -> str:
        if "GARBLE" in prompt:
            return "Both answers are fine, I suppose."
        if "[Predicted Answer]" in prompt:
            ref = _block(prompt, "[Correct Answer]", "[Predicted Answer]").lower()
            pred = prompt.split("[Predicted Answer]\n", 1)[1].split("\nIs the predicted", 1)[0].lower()
            return ("yes" if ref and ref in pred else "no") + "\nReason: compared with the correct answer."
        ref = _block(prompt, "[The Start of Reference Answer]", "[The End of Reference Answer]").lower()
        a1 = _block(prompt, "[The Start of Assistant 1's Answer]", "[The End of Assistant 1's Answer]").lower()
        a2 = _block(prompt, "[The Start of Assistant 2's Answer]", "[The End of Assistant 2's Answer]").lower()
        s1 = (9 if ref in a1 else 3) + self.first_bonus
        s2 = 9 if ref in a2 else 3
        return ("Evaluation evidence: Assistant 1 is compared with the reference, and so is Assistant 2. "
                f"Both are rated for accuracy, relevance and naturalness.\nThe score of Assistant 1: {s1}\n"
                f"The score of Assistant 2: {s2}")

    def _make_app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            prompt = body["messages"][-1]["content"]
            entry = {"prompt": prompt, "temperature": body.get("temperature"), "model": body.get("model"),
                     "authorization": request.headers.get("authorization"), "status": 200}
            with self._lock:
                self.requests.append(entry)
            if "FAIL" in prompt:
                entry["status"] = 500
                return JSONResponse(status_code=500, content={"error": {"message": "boom", "type": "server_error"}})
            return {
                "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model"),
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": self.reply(prompt)}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }

        return app

    def start(self) -> "JudgeStubServer":
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        threading.Thread(target=self._server.run, name="judge-stub", daemon=True).start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("judge stub server did not start within 10 s")
            time.sleep(0.02)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True

    def __enter__(self) -> "JudgeStubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
