"""Lettered options for classification-style tasks, shared by every adapter that lists choices.

The option order is a stable hash of (task, instance id): the gold letter varies across
instances but never between runs. Many-label tasks (ImageNet, ChineseFoodNet) get a reduced list
that always contains the gold label (paper §2.1: input length limits).
"""

from __future__ import annotations

import hashlib
import random

__all__ = ["LETTERS", "reduced_options", "format_options", "answer_with_letter"]

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def reduced_options(task: str, instance_id: str | int, gold: str, labels: list[str], max_options: int) -> list[str]:
    """``max_options`` labels in a stable shuffled order: the gold one plus distractors."""
    if max_options > len(LETTERS):
        raise ValueError(f"max_options={max_options} exceeds the {len(LETTERS)} letters available")
    rng = random.Random(int(hashlib.sha256(f"{task}/{instance_id}".encode()).hexdigest()[:16], 16))
    others = sorted(label for label in set(labels) if label != gold)
    picked = rng.sample(others, min(max_options - 1, len(others))) + [gold]
    rng.shuffle(picked)
    return picked


def format_options(options: list[str], prefix: str = "Options: ") -> str:
    """``Options: (A) cat (B) dog``; the outputs use the same ``(X) label`` form."""
    return prefix + " ".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(options))


def answer_with_letter(options: list[str], gold: str) -> str:
    return f"({LETTERS[options.index(gold)]}) {gold}"
