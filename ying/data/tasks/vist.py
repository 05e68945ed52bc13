"""VIST, story-in-sequence: ``sis/{train,val,test}.story-in-sequence.json`` and the photos
``images/{train,val,test}/<photo_flickr_id>.<ext>`` (``.jpg`` for most; other extensions are
found by listing the folder).

Each file is ``{"info", "albums", "images", "type", "annotations": [[{story_id, photo_flickr_id,
worker_arranged_photo_order, text, original_text, album_id, storylet_id, ...}], ...]}``: one
sentence per annotation. The sentences of a story are grouped by ``story_id`` and ordered by
``worker_arranged_photo_order``; the instance is the story's five photos in that order and the
story is their ``text`` fields joined with spaces (``original_text`` stays in meta). Example
annotation::

    [{"original_text": "Our landmark tree in town was about to be destroyed.", "album_id":
      "44277", "photo_flickr_id": "1741642", "setting": "first-2-pick-and-tell", "worker_id":
      "...", "story_id": "30355", "tier": "story-in-sequence", "worker_arranged_photo_order": 0,
      "text": "our landmark tree in town was about to be destroyed .", "storylet_id": "151775"}]
"""

from __future__ import annotations

from typing import Iterator

from ... import storage
from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._common import json_items, list_names

SPEC = TaskSpec(key="vist", category="generation", lang="en", splits=("train", "validation", "test"), rephrase=False)

_SUBSET = {"train": "train", "validation": "val", "test": "test"}
STORY_LENGTH = 5


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    if split not in _SUBSET:
        raise ValueError(f"vist has splits {SPEC.splits}; got {split!r}")
    sub = _SUBSET[split]
    path = storage.join(root, "sis", f"{sub}.story-in-sequence.json")
    stories: dict[str, list[tuple[int, dict]]] = {}
    # Streamed: sentences are grouped by story (five per story), never the whole parsed file.
    for i, entry in enumerate(json_items(SPEC.key, split, path, "annotations")):
        if isinstance(entry, Reject):
            yield Reject(SPEC.key, split, path, f"unusable story file: {entry.reason}")
            return
        group = entry[1]
        try:
            ann = group[0]
            story_id = str(ann["story_id"])
        except (KeyError, TypeError, IndexError) as e:
            yield Reject(SPEC.key, split, f"{path}#annotations[{i}]", f"missing field {e}")
            continue
        stories.setdefault(story_id, []).append((i, ann))
    image_dir = storage.join(root, "images", sub)
    by_stem: dict[str, str] = {}
    for name in sorted(list_names(image_dir), key=lambda s: (not s.lower().endswith(".jpg"), s)):
        by_stem.setdefault(name.rsplit(".", 1)[0], name)
    for story_id, anns in stories.items():
        first = anns[0][0]
        where = f"{path}#story_id={story_id}"
        try:
            ordered = sorted(anns, key=lambda a: int(a[1]["worker_arranged_photo_order"]))
            photo_ids = [str(a["photo_flickr_id"]) for _, a in ordered]
            texts = [a["text"] for _, a in ordered]
        except (KeyError, TypeError, ValueError) as e:
            yield Reject(SPEC.key, split, where, f"missing or malformed field {e} (first at annotations[{first}])")
            continue
        orders = [int(a["worker_arranged_photo_order"]) for _, a in ordered]
        if orders != list(range(STORY_LENGTH)):
            yield Reject(SPEC.key, split, where, f"expected photo orders 0..{STORY_LENGTH - 1}, found {orders}")
            continue
        if not all(isinstance(t, str) and t.strip() for t in texts):
            yield Reject(SPEC.key, split, where, "a sentence of the story is not text")
            continue
        missing = [p for p in photo_ids if p not in by_stem]
        if missing:
            yield Reject(SPEC.key, split, where, f"missing image file for photo {', '.join(missing)} in images/{sub}")
            continue
        yield SourceInstance(
            task=SPEC.key,
            split=split,
            source_id=story_id,
            source=where,
            inputs="",
            outputs=" ".join(t.strip() for t in texts),
            image_paths=[storage.join(image_dir, by_stem[p]) for p in photo_ids],
            meta={
                "story_id": story_id,
                "album_id": ordered[0][1].get("album_id"),
                "photo_flickr_ids": photo_ids,
                "storylet_ids": [a.get("storylet_id") for _, a in ordered],
                "original_texts": [a.get("original_text") for _, a in ordered],
                "annotation_indices": [i for i, _ in ordered],
            },
        )
