"""Winoground: ``examples.jsonl`` and ``images/<name>.png``; a test set of 800 examples.

Each line has two images and two captions made of the same words, ``caption_0`` describing
``image_0`` and ``caption_1`` describing ``image_1``. The images stay in that order; the captions
are listed as (A) and (B) in an order fixed by a hash of the example id, so the right pairing is
not always the same. The model says which caption goes with the first image and which with the
second. Example line::

    {"id": 0, "image_0": "ex_0_img_0", "image_1": "ex_0_img_1", "caption_0": "an old person kisses
     a young person", "caption_1": "a young person kisses an old person", "tag": "Object",
     "secondary_tag": "", "num_main_preds": 1, "collapsed_tag": "Object"}
"""

from __future__ import annotations

import hashlib
from typing import Iterator

from ... import storage
from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._common import list_names, json_lines

SPEC = TaskSpec(key="winoground", category="reasoning", lang="en", splits=("test",), rephrase=False)

EXAMPLES = "examples.jsonl"
IMAGE_DIR = "images"


def captions_swapped(example_id: object) -> bool:
    """Whether caption_1 is listed first, as (A); stable across runs."""
    return hashlib.sha256(f"winoground/{example_id}".encode()).digest()[0] % 2 == 1


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    if split not in SPEC.splits:
        raise ValueError(f"winoground has splits {SPEC.splits}; got {split!r}")
    path = storage.join(root, EXAMPLES)
    present = None
    for item in json_lines(SPEC.key, split, path):
        if isinstance(item, Reject):
            yield item
            continue
        where, rec = item
        if present is None:  # list the image folder once, and only if the file had a record
            present = list_names(storage.join(root, IMAGE_DIR))
        try:
            ex_id = rec["id"]
            images = [rec["image_0"], rec["image_1"]]
            captions = [rec["caption_0"], rec["caption_1"]]
        except (KeyError, TypeError) as e:
            yield Reject(SPEC.key, split, where, f"missing field {e}")
            continue
        if not all(isinstance(c, str) and c.strip() for c in captions) or not all(isinstance(i, str) for i in images):
            yield Reject(SPEC.key, split, where, "captions or image names are not text")
            continue
        files = [f"{name}.png" for name in images]
        missing = [f for f in files if f not in present]
        if missing:
            yield Reject(SPEC.key, split, where, f"missing image file {', '.join(IMAGE_DIR + '/' + f for f in missing)}")
            continue
        captions = [c.strip() for c in captions]
        order = [1, 0] if captions_swapped(ex_id) else [0, 1]  # order[k]: caption shown as letter k
        letter_of = {order[0]: "A", order[1]: "B"}
        inputs = f"(A) {captions[order[0]]}\n(B) {captions[order[1]]}"
        outputs = (
            f"First image: ({letter_of[0]}) {captions[0]}\n"
            f"Second image: ({letter_of[1]}) {captions[1]}"
        )
        yield SourceInstance(
            task=SPEC.key,
            split=split,
            source_id=str(ex_id),
            source=where,
            inputs=inputs,
            outputs=outputs,
            image_paths=[storage.join(root, IMAGE_DIR, f) for f in files],
            meta={
                "id": ex_id,
                "image_0": images[0],
                "image_1": images[1],
                "caption_0": captions[0],
                "caption_1": captions[1],
                "caption_letters": {"caption_0": letter_of[0], "caption_1": letter_of[1]},
                "tag": rec.get("tag"),
                "secondary_tag": rec.get("secondary_tag"),
                "collapsed_tag": rec.get("collapsed_tag"),
                "num_main_preds": rec.get("num_main_preds"),
            },
        )
