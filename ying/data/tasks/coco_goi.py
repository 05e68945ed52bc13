"""COCO-GOI (grounded object identification) from COCO ``annotations/instances_<sub>.json``.

One instance per object annotation: its box is drawn in red (the visual referring prompt) and the
model picks the object's category from lettered options. The options are every category when
there are at most ``MAX_OPTIONS``, else the gold plus distractors; their order is a stable hash of
the annotation id, so the gold letter varies but never between runs.
"""

from __future__ import annotations

from typing import Iterator

from ... import storage
from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._common import SourceFileError, list_names, load_json
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
    try:
        data = load_json(ann_path)
        images = {im["id"]: im for im in data["images"]}
        categories = {c["id"]: c["name"] for c in data["categories"]}
        annotations = data["annotations"]
    except (SourceFileError, KeyError, TypeError) as e:
        yield Reject(SPEC.key, split, ann_path, f"unusable annotation file: {e}")
        return
    names = sorted(set(categories.values()))
    present = list_names(storage.join(root, sub))
    for i, ann in enumerate(annotations):
        where = f"{ann_path}#annotations[{i}]"
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
        try:
            filename, width, height = image["file_name"], image["width"], image["height"]
        except KeyError as e:
            yield Reject(SPEC.key, split, where, f"image {image_id} lacks field {e}")
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
