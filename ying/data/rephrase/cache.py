"""The rephrase cache: every LLM outcome, keyed by (model, prompt version, prompt hash), in the run's storage.

Layout: ``<cache_dir>/<writer id>.jsonl`` (local) or ``<cache_dir>/<writer id>-<seq>.jsonl`` (object
stores, which cannot append): one JSON line per outcome,
``{"key", "model", "prompt_version", "prompt_sha256", "text", "error", "prompt_tokens", "completion_tokens"}``.
Each writer (one per rephrase actor) owns its files, so no two processes write one file. Local lines are
flushed as they are written and remote shards every ``flush_every`` entries and at the end of each
batch, so a crash loses at most the entries since the last flush; those requests are sent again on resume.
A failed request is cached too (``text`` null, ``error`` its kind): a re-run does not pay for it again,
``retry_failed`` does. A later line for the same key wins (``retry_failed`` appends one).
A line that does not parse (a write cut short by a crash) is skipped with a warning naming the file.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from fsspec.implementations.local import LocalFileSystem

from ying import storage

__all__ = ["cache_key", "load_cache", "CacheWriter"]

log = logging.getLogger(__name__)


def cache_key(model: str, prompt_version: str, prompt_sha256: str) -> str:
    return f"{model}|{prompt_version}|{prompt_sha256}"


def load_cache(cache_dir: str, model: str, prompt_version: str) -> dict[str, dict[str, Any]]:
    """key -> the latest cached outcome, for this model and prompt version only."""
    fs, path = storage.filesystem(cache_dir)
    if not fs.exists(path):
        return {}
    entries: dict[str, dict[str, Any]] = {}
    bad = 0
    for f in sorted(fs.find(path)):
        if not f.endswith(".jsonl"):
            continue
        with fs.open(f, "rb") as fh:
            for n, line in enumerate(fh, 1):
                try:
                    entry = json.loads(line)
                    key = entry["key"]
                except (ValueError, KeyError, TypeError):
                    bad += 1
                    log.warning("rephrase cache %s line %d is not a cache entry; skipped", f, n)
                    continue
                if entry.get("model") == model and entry.get("prompt_version") == prompt_version:
                    entries[key] = {k: entry.get(k) for k in ("text", "error", "prompt_tokens", "completion_tokens")}
    if bad:
        log.warning("rephrase cache %s: %d unreadable line(s) skipped; their prompts will be sent again", cache_dir, bad)
    return entries


class CacheWriter:
    def __init__(self, cache_dir: str, flush_every: int = 64) -> None:
        self.cache_dir = cache_dir
        self.fs, self.dir = storage.filesystem(cache_dir)
        self.fs.makedirs(self.dir, exist_ok=True)
        self.local = isinstance(self.fs, LocalFileSystem)
        self.writer_id = uuid.uuid4().hex[:16]
        self.flush_every = flush_every
        self._buffer: list[str] = []
        self._seq = 0
        self._fh = self.fs.open(f"{self.dir}/{self.writer_id}.jsonl", "ab") if self.local else None

    def add(self, key: str, model: str, prompt_version: str, prompt_sha256: str, text: str | None,
            error: str | None, prompt_tokens: int, completion_tokens: int) -> None:
        line = json.dumps({"key": key, "model": model, "prompt_version": prompt_version,
                           "prompt_sha256": prompt_sha256, "text": text, "error": error,
                           "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
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

