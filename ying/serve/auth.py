"""Bearer-token auth and the request-size limit for the Serve app (Ray's token auth does not cover
the Serve port, and Serve has no body limit of its own).

The token is read where the app is built (``YING_SERVE_TOKEN``, else ``serve.token_file``); the
replicas only ever see a salted SHA-256 digest of it, so the token itself never reaches a
runtime_env, a deployment's arguments, the dashboard or a log. Requests are compared in constant
time (``hmac.compare_digest`` of digests).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import secrets
from dataclasses import dataclass

__all__ = ["TOKEN_ENV", "TokenDigest", "read_token", "token_digest", "is_loopback", "require_token_off_loopback",
           "GuardMiddleware"]

TOKEN_ENV = "YING_SERVE_TOKEN"


@dataclass(frozen=True)
class TokenDigest:
    salt: bytes
    digest: bytes

    def matches(self, given: str) -> bool:
        candidate = hashlib.sha256(self.salt + given.encode("utf-8")).digest()
        return hmac.compare_digest(candidate, self.digest)


def read_token(token_file: str | None) -> str | None:
    """The bearer token: ``YING_SERVE_TOKEN``, else the first line of ``token_file``; None when neither is set."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        return token
    if token_file:
        path = os.path.expanduser(token_file)
        try:
            with open(path, encoding="utf-8") as f:
                token = f.readline().strip()
        except OSError as e:
            raise ValueError(f"serve.token_file {token_file}: cannot read the token ({e.strerror})") from None
        if not token:
            raise ValueError(f"serve.token_file {token_file} is empty")
        return token
    return None


def token_digest(token: str | None) -> TokenDigest | None:
    if token is None:
        return None
    salt = secrets.token_bytes(16)
    return TokenDigest(salt, hashlib.sha256(salt + token.encode("utf-8")).digest())


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: assume it is reachable from elsewhere


def require_token_off_loopback(host: str, has_token: bool) -> None:
    if not has_token and not is_loopback(host):
        raise ValueError(
            f"refusing to serve on {host}, which is not a loopback address, without a bearer token: set "
            f"{TOKEN_ENV} (or serve.token_file) or listen on 127.0.0.1")


class GuardMiddleware:
    """Pure ASGI middleware: bearer auth, then the body-size limit (413 from Content-Length, or once a
    chunked body passes the limit). Its settings come from ``app.state.guard`` (set by the replica)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        guard = scope["app"].state.guard
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        path = scope.get("path", "/")
        root = scope.get("root_path", "")
        if root and path.startswith(root):  # under a route_prefix: match routes as the app sees them
            path = path[len(root):] or "/"
        if guard.token is not None and path not in guard.open_paths:
            scheme, _, given = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not guard.token.matches(given.strip()):
                return await _json_response(send, 401, _error("missing or wrong bearer token (Authorization: "
                                                                "Bearer <token>)", "authentication_error"),
                                            {b"www-authenticate": b"Bearer"})
        length = headers.get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return await _json_response(send, 400, _error("Content-Length is not an integer"))
            if n > guard.max_body_bytes:
                return await _json_response(send, 413, _too_large(n, guard.max_body_bytes))
            return await self.app(scope, receive, send)
        if scope.get("method") in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return await self.app(scope, receive, send)
        # No Content-Length (chunked): buffer up to the limit, then replay.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > guard.max_body_bytes:
                return await _json_response(send, 413, _too_large(size, guard.max_body_bytes, at_least=True))
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay_receive():
            return replay.pop() if replay else await receive()

        return await self.app(scope, replay_receive, send)


@dataclass(frozen=True)
class Guard:
    token: TokenDigest | None
    max_body_bytes: int
    open_paths: frozenset[str] = frozenset({"/healthz"})


def _error(message: str, kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def _too_large(n: int, limit: int, at_least: bool = False) -> dict:
    size = f"at least {n}" if at_least else str(n)
    return _error(f"request body is {size} bytes, over the limit of {limit} bytes (serve.max_body_bytes)")


async def _json_response(send, status: int, payload: dict, extra_headers: dict | None = None):
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += list((extra_headers or {}).items())
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
