"""NLVR2 (M3IT's ``nlvr`` task: a statement about a left and a right photograph, true or false).

Reads the release's JSON-lines files ``train.json``, ``dev.json`` and ``test1.json`` (the public
test set, which has labels) and the images ``images/<train|dev|test1>/``. The left and right images
of identifier ``split-set_id-pair_id-sentence_id`` are ``split-set_id-pair_id-img0.png`` and
``-img1.png``; the direct image download keeps train images in numbered sub-folders, named by the
record's ``directory`` field, which is used when present. Both images are kept in order (left,
right). Example line::

    {"identifier": "dev-850-0-0", "sentence": "The left image contains twice the number of dogs as
     the right image.", "label": "True", "left_url": "https://...", "right_url": "https://...",
     "synset": "n02110341", "query": "dalmatian puppy21", "writer": "...", "validation": {...}}
"""

from __future__ import annotations

from typing import Iterator

from ... import storage
from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._common import FolderIndex, json_lines

SPEC = TaskSpec(key="nlvr", category="reasoning", lang="en", splits=("train", "validation", "test"), rephrase=False)

_FILE = {"train": "train", "validation": "dev", "test": "test1"}
_LABELS = {"true": "true", "false": "false"}


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    if split not in _FILE:
        raise ValueError(f"nlvr has splits {SPEC.splits}; got {split!r}")
    name = _FILE[split]
    path = storage.join(root, f"{name}.json")
    present = FolderIndex()  # one listing per image folder
    for item in json_lines(SPEC.key, split, path):
        if isinstance(item, Reject):
            yield item
            continue
        where, rec = item
        try:
            identifier, sentence, label = rec["identifier"], rec["sentence"], rec["label"]
        except (KeyError, TypeError) as e:
            yield Reject(SPEC.key, split, where, f"missing field {e}")
            continue
        gold = _LABELS.get(str(label).strip().lower())
        if not isinstance(identifier, str) or identifier.count("-") < 3:
            yield Reject(SPEC.key, split, where, f"identifier {identifier!r} is not split-set-pair-sentence")
            continue
        if not isinstance(sentence, str) or not sentence.strip() or gold is None:
            yield Reject(SPEC.key, split, where, f"sentence is not text or label {label!r} is not True/False")
            continue
        stem = identifier.rsplit("-", 1)[0]
        folder = storage.join(root, "images", name)
        if rec.get("directory") is not None:
            folder = storage.join(folder, str(rec["directory"]))
        files = [f"{stem}-img0.png", f"{stem}-img1.png"]
        missing = [f for f in files if not present.has(folder, f)]
        if missing:
            yield Reject(SPEC.key, split, where, f"missing image file {', '.join(missing)} in {folder}")
            continue
        yield SourceInstance(
            task=SPEC.key,
            split=split,
            source_id=identifier,
            source=where,
            inputs=sentence.strip(),
            outputs=gold,
            image_paths=[storage.join(folder, f) for f in files],
            meta={
                "identifier": identifier,
                "original_answer": gold,
                "label": label,
                "left_url": rec.get("left_url"),
                "right_url": rec.get("right_url"),
                "synset": rec.get("synset"),
            },
        )
