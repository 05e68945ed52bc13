"""Hand-written instruction pools (10 per task, ``instructions/<task>.json``) and the pick per record.

The pick is a stable hash of (seed, record id), so a rebuild gives every record the same
instruction and a different seed reshuffles them.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

__all__ = ["POOL_DIR", "POOL_SIZE", "load_pool", "pick_instruction"]

POOL_DIR = Path(__file__).parent / "instructions"
POOL_SIZE = 10  # the paper: annotators wrote 10 instructions per task


@functools.lru_cache(maxsize=None)
def _load(task: str) -> tuple[str, ...]:
    path = POOL_DIR / f"{task}.json"
    if not path.exists():
        known = sorted(p.stem for p in POOL_DIR.glob("*.json"))
        raise FileNotFoundError(f"no instruction pool for task {task!r} at {path}; pools exist for {known}")
    pool = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(pool, list) or not all(isinstance(s, str) and s.strip() for s in pool):
        raise ValueError(f"{path}: expected a JSON list of non-empty strings")
    if len(pool) != POOL_SIZE or len(set(pool)) != POOL_SIZE:
        raise ValueError(f"{path}: expected {POOL_SIZE} distinct instructions, found {len(pool)} ({len(set(pool))} distinct)")
    return tuple(pool)


def load_pool(task: str) -> list[str]:
    return list(_load(task))


def pick_instruction(task: str, record_id: str, seed: int) -> str:
    pool = _load(task)
    digest = hashlib.sha256(f"{seed}\x00{record_id}".encode("utf-8")).digest()
    return pool[int.from_bytes(digest[:8], "big") % len(pool)]
