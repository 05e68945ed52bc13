"""The rephrase cache: every LLM outcome, keyed by everything that changes an answer, in the run's storage.

Key: the SHA-256 of the prompt together with the settings that change what the endpoint answers
(``cache_settings``: model, prompt version, temperature, max_tokens, endpoint). A change to any of
them is a different key, so a cached answer is never served for a request that would get another one.

Ownership: the stage routes every key to one owner actor (``owner_of``: the key's leading hex digits
modulo the number of owners). Only the owner sends the prompt and writes its outcome, so one key has
one writer, and an owner loads only its own keys (``load_cache(..., owner=(i, n))``). A different
number of owners on a re-run just routes the keys anew: the files are shared, the reading is by key.

Layout: ``<cache_dir>/<writer id>.jsonl`` (local) or ``<cache_dir>/<writer id>-<seq>.jsonl`` (object
stores, which cannot append): one JSON line per outcome, ``{"key", "settings", "prompt_sha256", "text",
"error", "prompt_tokens", "completion_tokens"}``, the key first so that a reader routes a line without
parsing it. Local lines are flushed as they are written and remote shards every ``flush_every``
entries and when the stage ends, so a crash loses at most the entries since the last flush; those
requests are sent again on resume. A failed request is cached too (``text`` null, ``error`` its
kind): a re-run does not pay for it again, ``retry_failed`` does. A later line for the same key wins
(``retry_failed`` appends one). A line that does not parse (a write cut short by a crash) is skipped
with a warning naming the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from typing import Any

from fsspec.implementations.local import LocalFileSystem

from ying import storage

__all__ = ["OPENAI_DEFAULT_ENDPOINT", "cache_settings", "cache_key", "owner_of", "load_cache", "CacheWriter"]

log = logging.getLogger(__name__)

# Where the openai client sends requests when no base_url is given.
OPENAI_DEFAULT_ENDPOINT = "https://api.openai.com/v1"
_KEY_PREFIX = b'{"key": "'
_OUTCOME_FIELDS = ("text", "error", "prompt_tokens", "completion_tokens")


def cache_settings(model: str, prompt_version: str, temperature: float, max_tokens: int,
                   base_url: str | None) -> dict[str, Any]:
    """The request settings that change an answer, normalised (``RephraseConfig`` fields)."""
    return {"model": model, "prompt_version": prompt_version, "temperature": float(temperature),
            "max_tokens": int(max_tokens), "endpoint": (base_url or OPENAI_DEFAULT_ENDPOINT).rstrip("/")}


def cache_key(settings: dict[str, Any], prompt: str) -> str:
    """64 hex digits; the same prompt under other settings is another key."""
    payload = json.dumps({"settings": settings, "prompt": prompt}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def owner_of(key: str, owners: int) -> int:
    """Which of ``owners`` owner actors sends and caches ``key`` (uniform: the key is a hash)."""
    return int(key[:15], 16) % owners


def _line_key(line: bytes) -> str | None:
    if line.startswith(_KEY_PREFIX) and len(line) > len(_KEY_PREFIX) + 64:
        return line[len(_KEY_PREFIX):len(_KEY_PREFIX) + 64].decode("ascii", "replace")
    return None


def load_cache(cache_dir: str, settings: dict[str, Any],
               owner: tuple[int, int] | None = None) -> dict[str, dict[str, Any]]:
    """key -> the latest cached outcome under ``settings``; with ``owner=(i, n)`` only owner i's keys."""
    fs, path = storage.filesystem(cache_dir)
    if not fs.exists(path):
        return {}
    entries: dict[str, dict[str, Any]] = {}
    bad = other = 0
    for f in sorted(fs.find(path)):
        if not f.endswith(".jsonl"):
            continue
        with fs.open(f, "rb") as fh:
            for n, line in enumerate(fh, 1):
                key = _line_key(line)
                if key is not None and owner is not None and owner_of(key, owner[1]) != owner[0]:
                    continue  # another owner's key: not even parsed
                try:
                    entry = json.loads(line)
                    key = entry["key"]
                except (ValueError, KeyError, TypeError):
                    bad += 1
                    log.warning("rephrase cache %s line %d is not a cache entry; skipped", f, n)
                    continue
                if entry.get("settings") != settings:
                    other += 1  # another model, temperature, endpoint, ... or an older cache format
                    continue
                entries[key] = {k: entry.get(k) for k in _OUTCOME_FIELDS}
    if bad:
        log.warning("rephrase cache %s: %d unreadable line(s) skipped; their prompts will be sent again", cache_dir, bad)
    if other:
        log.info("rephrase cache %s: %d entries for other settings left aside", cache_dir, other)
    return entries


class CacheWriter:
    """Appends outcomes to this writer's own files (one writer per owner actor)."""

    def __init__(self, cache_dir: str, settings: dict[str, Any], flush_every: int = 64) -> None:
        self.cache_dir = cache_dir
        self.settings = settings
        self.fs, self.dir = storage.filesystem(cache_dir)
        self.fs.makedirs(self.dir, exist_ok=True)
        self.local = isinstance(self.fs, LocalFileSystem)
        self.writer_id = uuid.uuid4().hex[:16]
        self.flush_every = flush_every
        self._buffer: list[str] = []
        self._seq = 0
        self._fh = self.fs.open(f"{self.dir}/{self.writer_id}.jsonl", "ab") if self.local else None

    def add(self, key: str, prompt_sha256: str, text: str | None, error: str | None, prompt_tokens: int,
            completion_tokens: int) -> None:
        line = json.dumps({"key": key, "settings": self.settings, "prompt_sha256": prompt_sha256, "text": text,
                           "error": error, "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
                          ensure_ascii=False) + "\n"
        if self.local:
            # One write + flush per outcome: a killed process loses nothing it was told.
            self._fh.write(line.encode("utf-8"))
            self._fh.flush()
            return
        self._buffer.append(line)
        if len(self._buffer) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if self.local or not self._buffer:
            return
        data = "".join(self._buffer).encode("utf-8")
        storage.write_bytes_atomic(storage.join(self.cache_dir, f"{self.writer_id}-{self._seq:06d}.jsonl"), data)
        self._seq += 1
        self._buffer = []

    def close(self) -> None:
        self.flush()
        if self._fh is not None:
            self._fh.close()
            self._fh = None
