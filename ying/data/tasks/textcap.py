"""TextCaps v0.1: ``TextCaps_0.1_{train,val}.json`` plus ``train_images/<image_id>.jpg``.

Release layout (dl.fbaipublicfiles.com/textvqa/data/textcaps/): each JSON file is an object
``{"dataset_type", "dataset_name", "dataset_version", "data": [...]}`` with one ``data`` entry per
caption, e.g.::

    {"image_id": "011e7e629fb9ae7b", "image_path": "train/011e7e629fb9ae7b.jpg", "caption_id": 0,
     "caption_str": "Five Listerine Zero mouthwash bottles on a store shelf",
     "reference_strs": [...], "image_width": 1024, "image_height": 683, "set_name": "train", ...}

Train and validation images both come from the OpenImages training set and ship in
``train_images/``; the test file has no captions, so the splits are train and validation.
One instance per caption; all reference captions of the image stay in meta.
"""

from __future__ import annotations

from typing import Iterator

from ... import storage
from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._common import json_items, list_names

SPEC = TaskSpec(key="textcap", category="captioning", lang="en", splits=("train", "validation"), rephrase=False)

_FILE = {"train": "TextCaps_0.1_train.json", "validation": "TextCaps_0.1_val.json"}
IMAGE_DIR = "train_images"


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    if split not in _FILE:
        raise ValueError(f"textcap has splits {SPEC.splits}; got {split!r}")
    ann_path = storage.join(root, _FILE[split])
    present = list_names(storage.join(root, IMAGE_DIR))
    for i, entry in enumerate(json_items(SPEC.key, split, ann_path, "data")):
        if isinstance(entry, Reject):
            yield Reject(SPEC.key, split, ann_path, f"unusable annotation file: {entry.reason}")
            continue
        where, item = entry
        try:
            image_id, caption = item["image_id"], item["caption_str"]
        except (KeyError, TypeError) as e:
            yield Reject(SPEC.key, split, where, f"missing field {e}")
            continue
        if not isinstance(caption, str) or not caption.strip():
            yield Reject(SPEC.key, split, where, "caption_str is empty or not text")
            continue
        filename = f"{image_id}.jpg"
        if filename not in present:
            yield Reject(SPEC.key, split, where, f"missing image file {IMAGE_DIR}/{filename}")
            continue
        caption_id = item.get("caption_id", i)
        yield SourceInstance(
            task=SPEC.key,
            split=split,
            source_id=f"{image_id}-{caption_id}",
            source=where,
            inputs="",
            outputs=caption.strip(),
            image_paths=[storage.join(root, IMAGE_DIR, filename)],
            meta={
                "image_id": image_id,
                "caption_id": caption_id,
                "reference_strs": item.get("reference_strs"),
                "set_name": item.get("set_name"),
            },
        )
