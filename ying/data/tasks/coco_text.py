"""COCO-Text (Veit et al., 2016): ``COCO_Text.json`` plus the MS COCO ``train2014/`` images.

Release layout (v1.4 ``COCO_Text.json``; v2 ``cocotext.v2.json`` has the same keys): one object
``{"imgs": {...}, "anns": {...}, "imgToAnns": {...}, "cats": {}, "info": {...}}``. ``imgs`` maps
an image id to ``{"id", "file_name", "width", "height", "set": "train"|"val"}``; ``anns`` maps an
annotation id to a text region, e.g.::

    "45346": {"class": "machine printed", "bbox": [468.9, 286.7, 24.1, 9.1], "image_id": 217925,
              "id": 45346, "language": "english", "area": 206.06, "utf8_string": "New",
              "legibility": "legible"}

All COCO-Text images are COCO train2014 images, so files are ``train2014/<file_name>``. One
instance per text region: its box is drawn in red and the model picks the kind of text inside it
(machine printed / handwritten / others) from lettered options. Legibility, language and the
transcription stay in meta.
"""

from __future__ import annotations

from typing import Iterator

from ... import storage
from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._common import json_members, list_names
from ._options import answer_with_letter, format_options, reduced_options

SPEC = TaskSpec(key="coco-text", category="classification", lang="en", splits=("train", "validation"), rephrase=False)

ANN_FILE = "COCO_Text.json"
IMAGE_DIR = "train2014"
CLASSES = ("machine printed", "handwritten", "others")
_SET = {"train": "train", "validation": "val"}


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    if split not in _SET:
        raise ValueError(f"coco-text has splits {SPEC.splits}; got {split!r}")
    ann_path = storage.join(root, ANN_FILE)
    # Streamed: the images of the wanted set in one pass, then the annotations one at a time.
    imgs: dict[str, dict] = {}
    for entry in json_members(SPEC.key, split, ann_path, "imgs"):
        if isinstance(entry, Reject):
            yield Reject(SPEC.key, split, ann_path, f"unusable annotation file: {entry.reason}")
            return
        key, image = entry
        if isinstance(image, dict):  # every set's images: another set's annotation is skipped, not unknown
            imgs[key] = {k: image.get(k) for k in ("set", "file_name", "width", "height") if k in image}
    present = list_names(storage.join(root, IMAGE_DIR))
    for entry in json_members(SPEC.key, split, ann_path, "anns"):
        if isinstance(entry, Reject):
            yield Reject(SPEC.key, split, ann_path, f"unusable annotation file: {entry.reason}")
            continue
        key, ann = entry
        where = f"{ann_path}#anns[{key}]"
        if not isinstance(ann, dict):
            yield Reject(SPEC.key, split, where, "annotation is not an object")
            continue
        image = imgs.get(str(ann.get("image_id")))
        if not isinstance(image, dict):
            yield Reject(SPEC.key, split, where, f"unknown image_id {ann.get('image_id')!r}")
            continue
        if image.get("set") != _SET[split]:
            continue
        try:
            ann_id, image_id, gold = ann["id"], ann["image_id"], ann["class"]
            x, y, w, h = (float(v) for v in ann["bbox"])
            filename, width, height = image["file_name"], float(image["width"]), float(image["height"])
        except (KeyError, TypeError, ValueError) as e:
            yield Reject(SPEC.key, split, where, f"missing or malformed field {e}")
            continue
        if gold not in CLASSES:
            yield Reject(SPEC.key, split, where, f"unknown text class {gold!r}; expected one of {list(CLASSES)}")
            continue
        if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > width or y + h > height:
            yield Reject(SPEC.key, split, where, f"box {[x, y, w, h]} outside the {width:g}x{height:g} image")
            continue
        if filename not in present:
            yield Reject(SPEC.key, split, where, f"missing image file {IMAGE_DIR}/{filename}")
            continue
        options = reduced_options(SPEC.key, ann_id, gold, list(CLASSES), len(CLASSES))
        yield SourceInstance(
            task=SPEC.key,
            split=split,
            source_id=str(ann_id),
            source=where,
            inputs=format_options(options),
            outputs=answer_with_letter(options, gold),
            image_paths=[storage.join(root, IMAGE_DIR, filename)],
            boxes=[[x, y, w, h]],
            meta={
                "annotation_id": ann_id,
                "image_id": image_id,
                "original_answer": gold,
                "options": options,
                "legibility": ann.get("legibility"),
                "language": ann.get("language"),
                "utf8_string": ann.get("utf8_string"),
            },
        )
