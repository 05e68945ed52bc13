"""FM-IQA (Baidu, Freestyle Multilingual Image Question Answering): the released annotation file
``FM-IQA.json`` is one object ``{"train": [...], "val": [...]}`` whose records carry
``question_id``, ``image_id`` (the COCO id, as text), ``Question`` and ``Answer`` (both Chinese).
Images are the COCO 2014 files ``train2014/COCO_train2014_%012d.jpg`` (train records) and
``val2014/COCO_val2014_%012d.jpg`` (val records).

Raw record: ``{"question_id": "1", "image_id": "262148", "Question": "床单是什么颜色？", "Answer": "白色。"}``

The answers are free-form Chinese sentences, kept as they are (no rephrasing). The release has no
test split.
"""

from __future__ import annotations

from typing import Iterator

from ... import storage
from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._common import json_items, list_names

SPEC = TaskSpec(key="fm-iqa", category="chinese", lang="zh", splits=("train", "validation"), rephrase=False)

ANNOTATION_FILE = "FM-IQA.json"
_SECTION = {"train": "train", "validation": "val"}
_SUBSET = {"train": "train2014", "validation": "val2014"}


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    if split not in _SECTION:
        raise ValueError(f"fm-iqa has splits {SPEC.splits}; got {split!r}")
    path = storage.join(root, ANNOTATION_FILE)
    section = _SECTION[split]
    sub = _SUBSET[split]
    present = list_names(storage.join(root, sub))
    for entry in json_items(SPEC.key, split, path, section):  # streamed: the file holds every split
        if isinstance(entry, Reject):
            yield entry
            continue
        where, item = entry
        try:
            qid, image_id, question, answer = item["question_id"], item["image_id"], item["Question"], item["Answer"]
        except (KeyError, TypeError) as e:
            yield Reject(SPEC.key, split, where, f"missing field {e}")
            continue
        if not isinstance(question, str) or not question.strip() or not isinstance(answer, str) or not answer.strip():
            yield Reject(SPEC.key, split, where, "Question or Answer is not non-empty text")
            continue
        digits = str(image_id).strip()
        if not digits.isdigit():
            yield Reject(SPEC.key, split, where, f"image_id {image_id!r} is not a COCO image number")
            continue
        filename = f"COCO_{sub}_{int(digits):012d}.jpg"
        if filename not in present:
            yield Reject(SPEC.key, split, where, f"missing image file {sub}/{filename}")
            continue
        yield SourceInstance(
            task=SPEC.key,
            split=split,
            source_id=str(qid),
            source=where,
            inputs=question.strip(),
            outputs=answer.strip(),
            image_paths=[storage.join(root, sub, filename)],
            meta={"question_id": qid, "image_id": image_id, "original_answer": answer},
        )
