"""COCO-CN (Li et al., 2019): split lists ``coco-cn_train.txt``, ``coco-cn_val.txt`` and
``coco-cn_test.txt`` (one COCO image id per line, e.g. ``COCO_val2014_000000290008``) and the
human-written captions ``imageid.human-written-caption.txt``, one ``<image id>#<n>\\t<caption>``
per line. Images are the COCO 2014 files ``<subset>/<image id>.jpg``, where the subset
(``train2014`` or ``val2014``) is the middle part of the id.

Raw caption line: ``COCO_val2014_000000290008#0\\t一个男人站在厨房里切菜。``

One instance per human-written caption of an image in the split. A caption line that isn't
UTF-8, lacks the ``#<n>`` part or the tab, or names an image whose file is missing is rejected.
"""

from __future__ import annotations

from typing import Iterator

from ... import storage
from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._common import SourceFileError, FolderIndex, read_bytes

SPEC = TaskSpec(key="coco-cn", category="chinese", lang="zh", splits=("train", "validation", "test"), rephrase=False)

_SPLIT_FILE = {"train": "coco-cn_train.txt", "validation": "coco-cn_val.txt", "test": "coco-cn_test.txt"}
CAPTION_FILE = "imageid.human-written-caption.txt"


def _subset(image_id: str) -> str | None:
    parts = image_id.split("_")
    return parts[1] if len(parts) == 3 and parts[0] == "COCO" and parts[1] in ("train2014", "val2014") else None


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    if split not in _SPLIT_FILE:
        raise ValueError(f"coco-cn has splits {SPEC.splits}; got {split!r}")
    split_path = storage.join(root, _SPLIT_FILE[split])
    cap_path = storage.join(root, CAPTION_FILE)
    try:
        split_ids = set(read_bytes(split_path).decode("utf-8", "replace").split())
        caption_bytes = read_bytes(cap_path)
    except SourceFileError as e:
        yield Reject(SPEC.key, split, f"{split_path} + {cap_path}", str(e))
        return
    present = FolderIndex()  # one listing per image folder
    for n, raw_line in enumerate(caption_bytes.splitlines(), start=1):
        where = f"{cap_path}:{n}"
        head_tokens = raw_line.split(b"#", 1)[0].split(b"\t", 1)[0].split()
        head = head_tokens[0].decode("ascii", "replace") if head_tokens else ""
        if head not in split_ids:
            continue  # another split's image (or a blank line)
        try:
            line = raw_line.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            yield Reject(SPEC.key, split, where, f"line is not UTF-8: {e}")
            continue
        key, tab, caption = line.partition("\t")
        image_id, hash_, index = key.partition("#")
        if not tab or not hash_ or not index.strip() or not caption.strip():
            yield Reject(SPEC.key, split, where, "expected '<image id>#<n>\\t<caption>'")
            continue
        sub = _subset(image_id)
        if sub is None:
            yield Reject(SPEC.key, split, where, f"image id {image_id!r} is not COCO_<train2014|val2014>_<number>")
            continue
        filename = f"{image_id}.jpg"
        if not present.has(storage.join(root, sub), filename):
            yield Reject(SPEC.key, split, where, f"missing image file {sub}/{filename}")
            continue
        yield SourceInstance(
            task=SPEC.key,
            split=split,
            source_id=f"{image_id}-{index.strip()}",
            source=where,
            inputs="",
            outputs=caption.strip(),
            image_paths=[storage.join(root, sub, filename)],
            meta={"image_id": image_id, "caption_index": index.strip()},
        )
