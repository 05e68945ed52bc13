"""Hand-written instruction pools (10 per task, ``instructions/<task>.json``) and the pick per record.

The pick is a stable hash of (seed, record id), so a rebuild gives every record the same
instruction and a different seed reshuffles them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
from pathlib import Path

__all__ = ["POOL_DIR", "POOL_SIZE", "load_pool", "pick_instruction", "training_instructions"]

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


def training_instructions(task: str, seed: int, n: int) -> list[str]:
    """The ``n`` instructions of the task's pool that training may use, drawn by (seed, task).

    Paper Figure 5: train on 4 randomly selected instructions per task, evaluate with the other 6.
    """
    pool = _load(task)
    if not 1 <= n <= len(pool):
        raise ValueError(f"training instructions per task must be in 1..{len(pool)}, got {n}")
    rng = random.Random(f"train-instructions/{seed}/{task}")
    return [pool[i] for i in sorted(rng.sample(range(len(pool)), n))]


def pick_instruction(task: str, record_id: str, seed: int, n_instructions: int | None = None) -> str:
    """The record's instruction; ``n_instructions`` limits the pick to ``training_instructions(task, seed, n)``
    (pass it for training records only, so evaluation keeps the whole pool)."""
    pool = tuple(training_instructions(task, seed, n_instructions)) if n_instructions else _load(task)
    digest = hashlib.sha256(f"{seed}\x00{record_id}".encode("utf-8")).digest()
    return pool[int.from_bytes(digest[:8], "big") % len(pool)]
