"""MS COCO captions, Karpathy split: ``dataset_coco.json`` plus ``<filepath>/<filename>`` images.

One instance per (image, sentence), as in M3IT. Karpathy's ``restval`` is training data. The file
(~140 MB) is streamed an image entry at a time.
"""

from __future__ import annotations

from typing import Iterator

from ... import storage
from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._common import FolderIndex, json_items

SPEC = TaskSpec(key="coco", category="captioning", lang="en", splits=("train", "validation", "test"), rephrase=False)

_KARPATHY = {"train": ("train", "restval"), "validation": ("val",), "test": ("test",)}


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    if split not in _KARPATHY:
        raise ValueError(f"coco has splits {SPEC.splits}; got {split!r}")
    ann_path = storage.join(root, "dataset_coco.json")
    present = FolderIndex()  # one listing per image folder
    for entry in json_items(SPEC.key, split, ann_path, "images"):
        if isinstance(entry, Reject):
            yield Reject(SPEC.key, split, ann_path, f"unusable annotation file: {entry.reason}")
            continue
        where, img = entry
        try:
            if img["split"] not in _KARPATHY[split]:
                continue
            folder, filename, cocoid = img["filepath"], img["filename"], img["cocoid"]
            sentences = img["sentences"]
        except (KeyError, TypeError) as e:
            yield Reject(SPEC.key, split, where, f"missing field {e}")
            continue
        if not present.has(storage.join(root, folder), filename):
            yield Reject(SPEC.key, split, where, f"missing image file {folder}/{filename}")
            continue
        for j, sent in enumerate(sentences):
            raw = sent.get("raw") if isinstance(sent, dict) else None
            if not isinstance(raw, str) or not raw.strip():
                yield Reject(SPEC.key, split, f"{where}.sentences[{j}]", "missing field 'raw'")
                continue
            sentid = sent.get("sentid", j)
            yield SourceInstance(
                task=SPEC.key,
                split=split,
                source_id=f"{cocoid}-{sentid}",
                source=f"{where}.sentences[{j}]",
                inputs="",
                outputs=raw.strip(),
                image_paths=[storage.join(root, folder, filename)],
                meta={"cocoid": cocoid, "sentid": sentid, "karpathy_split": img["split"]},
            )
