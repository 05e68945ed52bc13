"""The unified record (DESIGN.md "The record"): one row per instance, the same for all 40 tasks.

Adapters yield ``SourceInstance`` (what the source files say, images still as paths); the build
stage turns each into a ``record`` dict with image bytes and an instruction. Records are stored as
Parquet with ``RECORD_SCHEMA``; images stay encoded bytes, never base64.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

__all__ = [
    "CATEGORIES",
    "SPLITS",
    "RECORD_SCHEMA",
    "REJECT_SCHEMA",
    "SourceInstance",
    "Reject",
    "make_record_id",
    "validate_record",
]

CATEGORIES = ("captioning", "classification", "vqa", "kvqa", "reasoning", "generation", "chinese", "video")
SPLITS = ("train", "validation", "test")

RECORD_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("task", pa.string()),
        ("category", pa.string()),
        ("lang", pa.string()),
        ("split", pa.string()),
        ("images", pa.list_(pa.binary())),
        ("instruction", pa.string()),
        ("inputs", pa.string()),
        ("outputs", pa.string()),
        ("meta", pa.string()),  # JSON object
    ]
)

REJECT_SCHEMA = pa.schema(
    [
        ("task", pa.string()),
        ("split", pa.string()),
        ("source", pa.string()),  # the file (and record within it) that was rejected
        ("reason", pa.string()),
    ]
)


@dataclass
class SourceInstance:
    """One instance as the source dataset states it, before images are loaded.

    ``image_paths`` are read as-is; ``boxes`` (per image: one (x, y, w, h) box in source pixels,
    or a list of them) are drawn as red rectangles (the paper's visual referring prompt), with
    ``box_labels`` (per image, one name per box) written beside them when given; ``video_path``
    is sampled into frames. ``source`` names the file and record, for error messages.
    """

    task: str
    split: str
    source_id: str
    source: str
    inputs: str
    outputs: str
    image_paths: list[str] = field(default_factory=list)
    video_path: str | None = None
    boxes: list | None = None
    box_labels: list[list[str]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    # Instances from one source record (a LLaVA conversation's rounds) share a group, given one after
    # another: the build counts the record once in ``read``. None: the instance is its own record.
    group: str | None = None


@dataclass
class Reject:
    """A source record that can't become an instance, and why."""

    task: str
    split: str
    source: str
    reason: str

    def to_row(self) -> dict[str, str]:
        return {"task": self.task, "split": self.split, "source": self.source, "reason": self.reason}


def make_record_id(task: str, split: str, source_id: str) -> str:
    return f"{task}-{split}-{source_id}"


def validate_record(record: dict[str, Any]) -> str | None:
    """The reason a finished record is unusable, or None when it is fine."""
    for col in ("id", "task", "category", "lang", "split", "instruction", "outputs", "meta"):
        if not isinstance(record.get(col), str):
            return f"field {col!r} is missing or not text"
    if record["category"] not in CATEGORIES:
        return f"unknown category {record['category']!r}"
    if record["split"] not in SPLITS:
        return f"unknown split {record['split']!r}"
    if record["lang"] not in ("en", "zh"):
        return f"unknown language {record['lang']!r}"
    if not record["outputs"].strip():
        return "empty output"
    if not record["instruction"].strip():
        return "empty instruction"
    if not isinstance(record.get("inputs"), str):
        return "field 'inputs' is not text"
    images = record.get("images")
    if not isinstance(images, list) or not images or not all(isinstance(b, (bytes, bytearray)) for b in images):
        return "no image bytes"
    try:
        json.loads(record["meta"])
    except json.JSONDecodeError as e:
        return f"meta is not JSON: {e}"
    return None
