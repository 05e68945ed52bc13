"""A real OpenAI-compatible chat-completions server on loopback, for tests.

It answers deterministically: the answer on the "Answer:" line after the last "Question:" of the
prompt is embedded in a sentence. It records every request (body and Authorization header), can be
told to refuse for chosen answers, or to fail with HTTP 500.

    with OpenAIStubServer() as stub:
        client = openai.OpenAI(base_url=stub.base_url, api_key="k")
"""

from __future__ import annotations

import threading
import time
import uuid

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

REFUSAL_TEXT = "Sorry, I cannot determine that from the image."


def answer_from_prompt(prompt: str) -> str:
    last = prompt.rsplit("Question:", 1)[-1]
    for line in last.splitlines():
        if line.startswith("Answer:"):
            return line[len("Answer:"):].strip()
    return ""


class OpenAIStubServer:
    def __init__(self, refuse_answers: set[str] | None = None, fail_with_500: bool = False) -> None:
        self.refuse_answers = set(refuse_answers or ())
        self.fail_with_500 = fail_with_500
        self.requests: list[dict] = []  # {"body": ..., "authorization": ...}
        self._lock = threading.Lock()
        self.app = self._make_app()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _make_app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat_completions(request: Request):
            body = await request.json()
            with self._lock:
                self.requests.append({"body": body, "authorization": request.headers.get("authorization")})
            if self.fail_with_500:
                return JSONResponse(
                    status_code=500,
                    content={"error": {"message": "stub failure", "type": "server_error", "code": None}},
                )
            prompt = "\n".join(
                m["content"] if isinstance(m.get("content"), str) else "" for m in body.get("messages", [])
            )
            answer = answer_from_prompt(prompt)
            if answer in self.refuse_answers:
                content = REFUSAL_TEXT
            elif any("\u4e00" <= ch <= "\u9fff" for ch in answer):
                content = f"根据图片，答案是{answer}。"
            else:
                content = f"Looking at the image, the answer is {answer}."
            prompt_tokens = len(prompt.split())
            completion_tokens = len(content.split())
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
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
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
