"""Something-Something v2 (Goyal et al., 2017): ``something-something-v2-train.json`` and
``something-something-v2-validation.json`` (lists of ``{id, label, template, placeholders}``),
``something-something-v2-labels.json`` (the 174 action classes, ``{"<template without
brackets>": "<index>"}``) and the clips ``20bn-something-something-v2/<id>.webm``.
``something-something-v2-test.json`` lists only ids, so it gives no records.

Raw record: ``{"id": "78687", "label": "holding potato next to vicks vaporub bottle",
"template": "Holding [something] next to [something]", "placeholders": ["potato", "vicks vaporub bottle"]}``

The model picks the action class (the template, ``[something]`` -> ``something``, as in the labels
file) from a reduced lettered option list that always holds the gold class.
"""

from __future__ import annotations

from typing import Iterator

from ... import storage
from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._common import SourceFileError, list_names, load_json
from ._options import answer_with_letter, format_options, reduced_options

SPEC = TaskSpec(key="ss", category="video", lang="en", splits=("train", "validation"), rephrase=False)

_SPLIT_FILE = {"train": "something-something-v2-train.json", "validation": "something-something-v2-validation.json"}
LABELS_FILE = "something-something-v2-labels.json"
VIDEO_DIR = "20bn-something-something-v2"
MAX_OPTIONS = 10


def template_class(template: str) -> str:
    return template.replace("[", "").replace("]", "")


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    if split not in _SPLIT_FILE:
        raise ValueError(f"ss has splits {SPEC.splits} (the test file has no labels); got {split!r}")
    path = storage.join(root, _SPLIT_FILE[split])
    labels_path = storage.join(root, LABELS_FILE)
    try:
        labels = load_json(labels_path)
        if not isinstance(labels, dict) or not labels:
            raise SourceFileError(f"{labels_path}: expected an object of class name -> index")
        items = load_json(path)
        if not isinstance(items, list):
            raise SourceFileError(f"{path}: expected a JSON list")
    except SourceFileError as e:
        yield Reject(SPEC.key, split, f"{path} + {labels_path}", str(e))
        return
    classes = sorted(labels)
    present = list_names(storage.join(root, VIDEO_DIR))
    for i, item in enumerate(items):
        where = f"{path}#[{i}]"
        try:
            vid, template, label = str(item["id"]), item["template"], item["label"]
        except (KeyError, TypeError) as e:
            yield Reject(SPEC.key, split, where, f"missing field {e}")
            continue
        if not isinstance(template, str):
            yield Reject(SPEC.key, split, where, "template is not text")
            continue
        gold = template_class(template)
        if gold not in labels:
            yield Reject(SPEC.key, split, where, f"template {template!r} is not a class in {LABELS_FILE}")
            continue
        name = f"{vid}.webm"
        if name not in present:
            yield Reject(SPEC.key, split, where, f"missing video file {VIDEO_DIR}/{name}")
            continue
        options = reduced_options(SPEC.key, vid, gold, classes, MAX_OPTIONS)
        yield SourceInstance(
            task=SPEC.key,
            split=split,
            source_id=vid,
            source=where,
            inputs=format_options(options),
            outputs=answer_with_letter(options, gold),
            video_path=storage.join(root, VIDEO_DIR, name),
            meta={"id": vid, "class": gold, "class_index": labels[gold], "label": label,
                  "template": template, "placeholders": item.get("placeholders"), "options": options},
        )
