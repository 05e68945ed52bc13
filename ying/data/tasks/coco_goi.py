"""COCO-GOI (grounded object identification) from COCO ``annotations/instances_<sub>.json``.

One instance per object annotation: its box is drawn in red (the visual referring prompt) and the
model picks the object's category from lettered options. The options are every category when
there are at most ``MAX_OPTIONS``, else the gold plus distractors; their order is a stable hash of
the annotation id, so the gold letter varies but never between runs.

The instances file (~330 MB for train2014) is streamed: one pass keeps the categories (listed last
in the release), one keeps each image's file name and size, and the annotations are then read one
at a time.
"""

from __future__ import annotations

from typing import Iterator

from ... import storage
from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._common import json_items, list_names
from ._options import LETTERS, answer_with_letter, format_options, reduced_options

SPEC = TaskSpec(key="coco-goi", category="classification", lang="en", splits=("train", "validation"), rephrase=False)

_SUBTYPE = {"train": "train2014", "validation": "val2014"}
MAX_OPTIONS = 5

__all__ = ["SPEC", "read_instances", "LETTERS"]


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    if split not in _SUBTYPE:
        raise ValueError(f"coco-goi has splits {SPEC.splits}; got {split!r}")
    sub = _SUBTYPE[split]
    ann_path = storage.join(root, "annotations", f"instances_{sub}.json")
    categories: dict = {}
    images: dict = {}  # image id -> (file_name, width, height): what the boxes and files need
    try:
        for entry in json_items(SPEC.key, split, ann_path, "categories"):
            if isinstance(entry, Reject):
                raise ValueError(entry.reason)
            categories[entry[1]["id"]] = entry[1]["name"]
        for entry in json_items(SPEC.key, split, ann_path, "images"):
            if isinstance(entry, Reject):
                raise ValueError(entry.reason)
            im = entry[1]
            images[im["id"]] = (im.get("file_name"), im.get("width"), im.get("height"))
    except (KeyError, TypeError, ValueError) as e:
        yield Reject(SPEC.key, split, ann_path, f"unusable annotation file: {e}")
        return
    names = sorted(set(categories.values()))
    present = list_names(storage.join(root, sub))
    for entry in json_items(SPEC.key, split, ann_path, "annotations"):
        if isinstance(entry, Reject):
            yield Reject(SPEC.key, split, ann_path, f"unusable annotation file: {entry.reason}")
            continue
        where, ann = entry
        try:
            ann_id, image_id, cat_id = ann["id"], ann["image_id"], ann["category_id"]
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError) as e:
            yield Reject(SPEC.key, split, where, f"missing or malformed field {e}")
            continue
        image, gold = images.get(image_id), categories.get(cat_id)
        if image is None or gold is None:
            yield Reject(SPEC.key, split, where, f"unknown image_id {image_id} or category_id {cat_id}")
            continue
        filename, width, height = image
        lacking = [k for k, v in zip(("file_name", "width", "height"), image) if v is None]
        if lacking:
            yield Reject(SPEC.key, split, where, f"image {image_id} lacks field {lacking[0]!r}")
            continue
        if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > width or y + h > height:
            yield Reject(SPEC.key, split, where, f"box {[x, y, w, h]} outside the {width}x{height} image")
            continue
        if filename not in present:
            yield Reject(SPEC.key, split, where, f"missing image file {sub}/{filename}")
            continue
        options = reduced_options(SPEC.key, ann_id, gold, names, MAX_OPTIONS)
        yield SourceInstance(
            task=SPEC.key,
            split=split,
            source_id=str(ann_id),
            source=where,
            inputs=format_options(options),
            outputs=answer_with_letter(options, gold),
            image_paths=[storage.join(root, sub, filename)],
            boxes=[[x, y, w, h]],
            meta={"annotation_id": ann_id, "image_id": image_id, "category": gold, "options": options},
        )
