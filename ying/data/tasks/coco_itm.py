"""COCO image-text matching from the MS COCO 2014 caption files.

Release files: ``annotations/captions_{train,val}2014.json``, each
``{"info", "licenses", "images": [{"id", "file_name", "width", "height", ...}],
"annotations": [{"image_id", "id", "caption"}]}``, e.g. an annotation
``{"image_id": 318556, "id": 48, "caption": "A very clean and well decorated empty bathroom"}``,
and the images ``{train2014,val2014}/<file_name>``.

One instance per image: the options are the image's first caption (file order) and
``MAX_OPTIONS - 1`` captions of other images of the same file, drawn and ordered by a stable hash
of the image id; the model picks the caption that matches the picture.
"""

from __future__ import annotations

import hashlib
import random
from typing import Iterator

from ... import storage
from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._common import json_items, list_names
from ._options import answer_with_letter, format_options

SPEC = TaskSpec(key="coco-itm", category="classification", lang="en", splits=("train", "validation"), rephrase=False)

_SUBTYPE = {"train": "train2014", "validation": "val2014"}
MAX_OPTIONS = 5


def _rng(image_id: object) -> random.Random:
    return random.Random(int(hashlib.sha256(f"{SPEC.key}/{image_id}".encode()).hexdigest()[:16], 16))


def _distractors(rng: random.Random, pool: list[tuple[int, object, str]], image_id: object, gold: str,
                 want: int) -> list[tuple[object, str]]:
    """Up to ``want`` distinct captions of other images, drawn from ``pool`` without replacement."""
    picked: list[tuple[object, str]] = []
    seen = {gold}
    order = rng.sample(range(len(pool)), len(pool)) if len(pool) <= 64 else None
    tries = 0
    while len(picked) < want and tries < max(64, 8 * want):
        if order is not None:
            if tries >= len(order):
                break
            _, other_image, caption = pool[order[tries]]
        else:
            _, other_image, caption = pool[rng.randrange(len(pool))]
        tries += 1
        if other_image != image_id and caption not in seen:
            seen.add(caption)
            picked.append((other_image, caption))
    return picked


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    if split not in _SUBTYPE:
        raise ValueError(f"coco-itm has splits {SPEC.splits}; got {split!r}")
    sub = _SUBTYPE[split]
    ann_path = storage.join(root, "annotations", f"captions_{sub}.json")
    # Streamed: the captions (the distractor pool, which the task needs whole) in one pass, then the
    # images one at a time; the parsed file (segmentation-free, but ~400k captions) is never held.
    first: dict[object, tuple[int, object]] = {}  # image id -> (annotation index, annotation id)
    pool: list[tuple[int, object, str]] = []  # (annotation index, image id, caption)
    for j, entry in enumerate(json_items(SPEC.key, split, ann_path, "annotations")):
        if isinstance(entry, Reject):
            yield Reject(SPEC.key, split, ann_path, f"unusable annotation file: {entry.reason}")
            return
        ann = entry[1]
        if not isinstance(ann, dict) or not isinstance(ann.get("caption"), str) or not ann["caption"].strip():
            yield Reject(SPEC.key, split, f"{ann_path}#annotations[{j}]", "annotation lacks a caption text")
            continue
        if "image_id" not in ann:
            yield Reject(SPEC.key, split, f"{ann_path}#annotations[{j}]", "missing field 'image_id'")
            continue
        pool.append((j, ann["image_id"], ann["caption"].strip()))
        first.setdefault(ann["image_id"], (len(pool) - 1, ann.get("id", j)))
    present = list_names(storage.join(root, sub))
    for entry in json_items(SPEC.key, split, ann_path, "images"):
        if isinstance(entry, Reject):
            yield Reject(SPEC.key, split, ann_path, f"unusable annotation file: {entry.reason}")
            continue
        where, img = entry
        try:
            image_id, filename = img["id"], img["file_name"]
        except (KeyError, TypeError) as e:
            yield Reject(SPEC.key, split, where, f"missing field {e}")
            continue
        if image_id not in first:
            yield Reject(SPEC.key, split, where, f"no caption for image {image_id}")
            continue
        if filename not in present:
            yield Reject(SPEC.key, split, where, f"missing image file {sub}/{filename}")
            continue
        pos, caption_id = first[image_id]
        gold = pool[pos][2]
        rng = _rng(image_id)
        others = _distractors(rng, pool, image_id, gold, MAX_OPTIONS - 1)
        if not others:
            yield Reject(SPEC.key, split, where, "no caption of another image to contrast with")
            continue
        options = [c for _, c in others] + [gold]
        rng.shuffle(options)
        yield SourceInstance(
            task=SPEC.key,
            split=split,
            source_id=str(image_id),
            source=where,
            inputs=format_options(options),
            outputs=answer_with_letter(options, gold),
            image_paths=[storage.join(root, sub, filename)],
            meta={
                "image_id": image_id,
                "caption_id": caption_id,
                "original_answer": gold,
                "options": options,
                "distractor_image_ids": [o for o, _ in others],
            },
        )
