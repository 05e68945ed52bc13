"""Flickr8k-CN: ``data/flickr8kzhc.caption.txt`` (``<image>.jpg#zhc#<n> <caption>`` per line),
split lists ``data/flickr8k{train,val,test}.txt`` and images in ``Flicker8k_Dataset/``.

One instance per Chinese caption. A line that isn't UTF-8 is rejected on its own.
"""

from __future__ import annotations

from typing import Iterator

from ... import storage
from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._common import SourceFileError, list_names, read_bytes

SPEC = TaskSpec(key="flickr8k-cn", category="chinese", lang="zh", splits=("train", "validation", "test"), rephrase=False)

_SPLIT_FILE = {"train": "flickr8ktrain.txt", "validation": "flickr8kval.txt", "test": "flickr8ktest.txt"}
CAPTION_FILE = "flickr8kzhc.caption.txt"
IMAGE_DIR = "Flicker8k_Dataset"


def _image_id(token: str) -> str:
    return token[:-4] if token.lower().endswith(".jpg") else token


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    if split not in _SPLIT_FILE:
        raise ValueError(f"flickr8k-cn has splits {SPEC.splits}; got {split!r}")
    split_path = storage.join(root, "data", _SPLIT_FILE[split])
    cap_path = storage.join(root, "data", CAPTION_FILE)
    try:
        split_ids = {_image_id(t) for t in read_bytes(split_path).decode("utf-8", "replace").split()}
        caption_bytes = read_bytes(cap_path)
    except SourceFileError as e:
        yield Reject(SPEC.key, split, f"{split_path} + {cap_path}", str(e))
        return
    present = list_names(storage.join(root, IMAGE_DIR))
    for n, raw_line in enumerate(caption_bytes.splitlines(), start=1):
        where = f"{cap_path}:{n}"
        try:
            line = raw_line.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            # Only this split reports it when the line's image is ours (or can't be told).
            head = raw_line.split(b"#", 1)[0].decode("ascii", "replace")
            if _image_id(head) in split_ids or "#" not in raw_line.decode("ascii", "replace"):
                yield Reject(SPEC.key, split, where, f"line is not UTF-8: {e}")
            continue
        if not line:
            continue
        key, _, caption = line.partition(" ")
        parts = key.split("#")
        image_id = _image_id(parts[0])
        if image_id not in split_ids:
            continue
        if len(parts) != 3 or not caption.strip():
            yield Reject(SPEC.key, split, where, "expected '<image>.jpg#zhc#<n> <caption>'")
            continue
        filename = f"{image_id}.jpg"
        if filename not in present:
            yield Reject(SPEC.key, split, where, f"missing image file {IMAGE_DIR}/{filename}")
            continue
        yield SourceInstance(
            task=SPEC.key,
            split=split,
            source_id=f"{image_id}-{parts[2]}",
            source=where,
            inputs="",
            outputs=caption.strip(),
            image_paths=[storage.join(root, IMAGE_DIR, filename)],
            meta={"image_id": image_id, "caption_kind": parts[1], "caption_index": parts[2]},
        )
