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
    contamination_kind(train_record, *hit)   # "karpathy-restval", "visdial-val2014", ...

The guard keeps each identity as a 64-bit key in sorted numpy arrays (about 12 bytes per image), so
the QC stage collects the evaluation images from its workers and ships one small object to every
worker that checks training data, whatever the number of evaluation records.

Why a training record is blocked (``CONTAMINATION_KINDS``; ``data.contamination_allow`` lets any of
them through and ``data.contamination_guard`` turns the guard to "report" or "off"):

- ``karpathy-restval``: a COCO caption record from Karpathy's ``restval`` (COCO val2014 pictures
  that Karpathy's split trains on; the paper's Table 9 count of 566,747 COCO training captions
  includes them);
- ``visdial-val2014``: a VisDial v1.0 training dialog on a COCO val2014 picture;
- ``eval-only-image``: the picture is in the train split of an evaluation-only task (ViQuAE, Winoground);
- ``shared-coco-image``: another training record on a COCO picture that an evaluation split shows;
- ``same-image-bytes``: byte-identical to an evaluation image, no COCO id involved.
"""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np

__all__ = ["COCO_ID_FIELDS", "CONTAMINATION_KINDS", "image_digests", "image_identities", "identity_key",
           "ContaminationGuard", "contamination_kind", "contamination_reason"]

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
    # LLaVA-Instruct's images are COCO train2017, which took in most of val2014 (COCO 2017 keeps the
    # 2014 ids): a VQA v2 or OK-VQA evaluation image can be in a LLaVA conversation.
    "llava": ("image_id", None),
}
CONTAMINATION_KINDS = ("karpathy-restval", "visdial-val2014", "eval-only-image", "shared-coco-image", "same-image-bytes")
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


def _meta(record: dict) -> dict:
    try:
        meta = json.loads(record.get("meta") or "{}")
    except (TypeError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def image_digests(record: dict) -> list[str]:
    """sha256 (hex) of each stored image's bytes, in order."""
    return [hashlib.sha256(bytes(data)).hexdigest() for data in record.get("images") or []]


def image_identities(record: dict, digests: list[str] | None = None) -> set[str]:
    """Every identity of the record's images: ``coco:<id>`` where known, and each image's sha256.
    ``digests``: the images' sha256 when the caller has them already."""
    ids = {f"sha256:{d}" for d in (image_digests(record) if digests is None else digests)}
    meta = _meta(record)
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


def identity_key(identity: str) -> int:
    """A 64-bit key for an identity (the guard stores keys, not strings). Collisions are
    negligible: about 1e-7 for a million evaluation images."""
    if identity.startswith("sha256:"):
        return int(identity[7:23], 16)  # the digest's first 8 bytes are already uniform
    return int.from_bytes(hashlib.blake2b(identity.encode("utf-8"), digest_size=8).digest(), "big")


def contamination_reason(identity: str, used_by: str, kind: str | None = None) -> str:
    why = f" ({kind})" if kind else ""
    return f"contamination{why}: image {identity} is used by {used_by} evaluation"


def contamination_kind(record: dict, identity: str, used_by: str) -> str:
    """Why this training record shares an evaluation image: one of ``CONTAMINATION_KINDS``."""
    if used_by.endswith("/train"):  # only evaluation-only tasks give the guard train-split images
        return "eval-only-image"
    meta = _meta(record)
    task = record.get("task")
    if task == "coco" and meta.get("karpathy_split") == "restval":
        return "karpathy-restval"
    if task == "visual-dialog" and "val2014" in str(meta.get("image_file", "")):
        return "visdial-val2014"
    return "shared-coco-image" if identity.startswith("coco:") else "same-image-bytes"


_SPLIT_RANK = {"train": 0, "validation": 1, "test": 2}  # an eval-only task's train images claim first


class ContaminationGuard:
    """The image identities of every evaluation record, and which task/split uses each.

    Identities go in as records (``add_evaluation``) or as ready keys (``add_keys``, from QC
    workers); the first ``find`` freezes them into sorted arrays. Where several evaluation sets
    show the same picture, the one reported is chosen by (eval-only train, validation, test; task
    name), never by arrival order, so parallel collection gives the same reasons every time.
    """

    def __init__(self) -> None:
        self._keys: list[int] = []
        self._where: list[int] = []
        self._names: list[str] = []
        self._name_index: dict[str, int] = {}
        self._sorted_keys: np.ndarray | None = None
        self._sorted_where: np.ndarray | None = None

    def __len__(self) -> int:
        self._freeze()
        return len(self._sorted_keys)

    def _name(self, where: str) -> int:
        if where not in self._name_index:
            self._name_index[where] = len(self._names)
            self._names.append(where)
        return self._name_index[where]

    def add_keys(self, keys, where: str) -> None:
        """Identity keys (``identity_key``) of images that ``where`` ("task/split") evaluates on."""
        w = self._name(where)
        for k in keys:
            self._keys.append(int(k))
            self._where.append(w)

    def add_evaluation(self, record: dict, split: str | None = None, digests: list[str] | None = None) -> None:
        where = f"{record.get('task')}/{split or record.get('split')}"
        self.add_keys([identity_key(i) for i in image_identities(record, digests)], where)

    def _freeze(self) -> None:
        if self._sorted_keys is not None and not self._keys:
            return
        keys = np.asarray(self._keys, dtype=np.uint64)
        where = np.asarray(self._where, dtype=np.int32)
        if self._sorted_keys is not None:  # keys added after an earlier freeze join the frozen ones
            keys = np.concatenate([self._sorted_keys, keys])
            where = np.concatenate([self._sorted_where, where])
        if len(keys):
            ranks = [(_SPLIT_RANK.get(n.rpartition("/")[2], 9), n.rpartition("/")[0]) for n in self._names]
            name_rank = np.empty(len(ranks), dtype=np.int64)
            name_rank[sorted(range(len(ranks)), key=ranks.__getitem__)] = np.arange(len(ranks))
            order = np.lexsort((name_rank[where], keys))  # by key, then by the evaluation set's rank
            keys, where = keys[order], where[order]
            first = np.ones(len(keys), dtype=bool)
            first[1:] = keys[1:] != keys[:-1]
            keys, where = keys[first], where[first]
        self._sorted_keys, self._sorted_where = keys, where
        self._keys, self._where = [], []  # the arrays hold them now

    def __getstate__(self) -> dict:
        self._freeze()  # ship the compact arrays, not the lists
        return self.__dict__.copy()

    def find(self, record: dict, digests: list[str] | None = None) -> tuple[str, str] | None:
        """(identity, "task/split" that evaluates on it) for the first shared image, or None.

        COCO ids are reported before byte hashes: they name the picture a person can look up.
        """
        self._freeze()
        if not len(self._sorted_keys):
            return None
        for identity in sorted(image_identities(record, digests)):  # "coco:" sorts before "sha256:"
            key = np.uint64(identity_key(identity))
            i = int(np.searchsorted(self._sorted_keys, key))
            if i < len(self._sorted_keys) and self._sorted_keys[i] == key:
                return identity, self._names[int(self._sorted_where[i])]
        return None
