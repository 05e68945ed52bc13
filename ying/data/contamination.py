"""Contamination guard: no training record may show an image that some task evaluates on.

The paper's sources share pictures: VQA v2, OK-VQA, A-OKVQA, COCO-CN and the CHAIR subset all
evaluate on COCO val2014 images, while Karpathy's COCO "restval" and VisDial v1.0 train on COCO
val2014 images too. A model trained on those records would be scored on pictures it has seen.

An image's identity is
- ``coco:<id>`` when the record comes from a COCO-based source and names its COCO image (the
  adapters keep the id in ``meta``: ``cocoid`` for Karpathy's COCO, ``image_id`` for the others,
  ``COCO_val2014_000000290008``-style names for COCO-CN and ST-VQA's ``file_path``), and
- ``sha256:<hex>`` of each stored image's bytes, always. Images without a drawn box are stored
  byte-for-byte as the source file, so the same file shared by two non-COCO datasets matches too.

A COCO image with a red box drawn on it (COCO-GOI, COCO-Text) has new bytes; the COCO id still
catches it. A non-COCO image re-encoded by a release is caught by neither: a perceptual hash would
be the next step.

    guard = ContaminationGuard()
    for rec in evaluation_records: guard.add_evaluation(rec)
    hit = guard.find(train_record)   # None, or (identity, "okvqa/validation")
"""

from __future__ import annotations

import hashlib
import json
import re

__all__ = ["COCO_ID_FIELDS", "image_identities", "ContaminationGuard", "contamination_reason"]

# Task -> (meta field holding the COCO 2014 image id, splits whose images are COCO images; None: all).
# VisDial's val and test images are its own VisualDialog_{val,test}2018 photos, numbered apart from COCO.
COCO_ID_FIELDS: dict[str, tuple[str, frozenset[str] | None]] = {
    "coco": ("cocoid", None),
    "vqa-v2": ("image_id", None),
    "okvqa": ("image_id", None),
    "a-okvqa": ("image_id", None),
    "coco-goi": ("image_id", None),
    "coco-itm": ("image_id", None),
    "coco-text": ("image_id", None),
    "coco-cn": ("image_id", None),
    "fm-iqa": ("image_id", None),
    "visual-dialog": ("image_id", frozenset({"train"})),
}
# COCO 2014 file names carry the id: COCO_val2014_000000290008(.jpg)
_COCO_NAME = re.compile(r"COCO_(?:train|val|test)2014_(\d{12})")


def _coco_id(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = _COCO_NAME.search(value)
        if m:
            return int(m.group(1))
        if value.strip().isdigit():
            return int(value.strip())
    return None


def image_identities(record: dict) -> set[str]:
    """Every identity of the record's images: ``coco:<id>`` where known, and each image's sha256."""
    ids = {f"sha256:{hashlib.sha256(bytes(data)).hexdigest()}" for data in record.get("images") or []}
    try:
        meta = json.loads(record.get("meta") or "{}")
    except (TypeError, ValueError):
        meta = {}
    if not isinstance(meta, dict):
        meta = {}
    field = COCO_ID_FIELDS.get(record.get("task", ""))
    coco = None
    if field and (field[1] is None or record.get("split") in field[1]):
        coco = _coco_id(meta.get(field[0]))
    if coco is None and isinstance(meta.get("file_path"), str):  # ST-VQA's COCO-Text images
        m = _COCO_NAME.search(meta["file_path"])
        coco = int(m.group(1)) if m else None
    if coco is not None:
        ids.add(f"coco:{coco}")
    return ids


def contamination_reason(identity: str, used_by: str) -> str:
    return f"contamination: image {identity} is used by {used_by} evaluation"


class ContaminationGuard:
    """The image identities of every evaluation record, and which task/split first used each."""

    def __init__(self) -> None:
        self._used_by: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._used_by)

    def add_evaluation(self, record: dict, split: str | None = None) -> None:
        where = f"{record.get('task')}/{split or record.get('split')}"
        for identity in sorted(image_identities(record)):
            self._used_by.setdefault(identity, where)

    def find(self, record: dict) -> tuple[str, str] | None:
        """(identity, "task/split" that evaluates on it) for the first shared image, or None.

        COCO ids are reported before byte hashes: they name the picture a person can look up.
        """
        for identity in sorted(image_identities(record)):  # "coco:" sorts before "sha256:"
            used_by = self._used_by.get(identity)
            if used_by is not None:
                return identity, used_by
        return None
