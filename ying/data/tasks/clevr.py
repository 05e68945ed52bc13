"""CLEVR v1.0: ``questions/CLEVR_{train,val}_questions.json`` and ``images/{train,val}/``.

Each questions file is ``{"info": ..., "questions": [...]}``; one instance per question, its image
``images/<split>/<image_filename>``. The test questions carry no answers, so the splits are train
and validation. The one-word answer is rephrased later (``rephrase=True``); the original stays in
meta. Example record::

    {"image_index": 0, "split": "val", "image_filename": "CLEVR_val_000000.png", "question_index": 0,
     "question": "Are there any other things that are the same shape as the big metallic object?",
     "answer": "no", "question_family_index": 38, "program": [...]}
"""

from __future__ import annotations

from typing import Iterator

from ... import storage
from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._common import json_items, list_names

SPEC = TaskSpec(key="clevr", category="reasoning", lang="en", splits=("train", "validation"), rephrase=True)

_SUBSET = {"train": "train", "validation": "val"}


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    if split not in _SUBSET:
        raise ValueError(f"clevr has splits {SPEC.splits}; got {split!r}")
    sub = _SUBSET[split]
    q_path = storage.join(root, "questions", f"CLEVR_{sub}_questions.json")
    image_dir = storage.join(root, "images", sub)
    present = list_names(image_dir)
    for entry in json_items(SPEC.key, split, q_path, "questions"):
        if isinstance(entry, Reject):
            yield Reject(SPEC.key, split, q_path, f"unusable questions file: {entry.reason}")
            continue
        where, q = entry
        try:
            qidx, filename, question, answer = q["question_index"], q["image_filename"], q["question"], q["answer"]
        except (KeyError, TypeError) as e:
            yield Reject(SPEC.key, split, where, f"missing field {e}")
            continue
        if not isinstance(question, str) or not question.strip():
            yield Reject(SPEC.key, split, where, "question is not text")
            continue
        if isinstance(answer, bool) or not isinstance(answer, (str, int)) or not str(answer).strip():
            yield Reject(SPEC.key, split, where, "answer is missing or not text")
            continue
        if not isinstance(filename, str) or filename not in present:
            yield Reject(SPEC.key, split, where, f"missing image file images/{sub}/{filename}")
            continue
        answer = str(answer).strip()
        yield SourceInstance(
            task=SPEC.key,
            split=split,
            source_id=str(qidx),
            source=where,
            inputs=question.strip(),
            outputs=answer,
            image_paths=[storage.join(image_dir, filename)],
            meta={
                "original_answer": answer,
                "question_index": qidx,
                "image_index": q.get("image_index"),
                "image_filename": filename,
                "question_family_index": q.get("question_family_index"),
            },
        )
