"""GQA (balanced questions, release 1.2): ``questions1.2/<sub>_balanced_questions.json`` + ``images/``.

Each question file is a JSON object keyed by question id. Raw record:
``"02930152": {"imageId": "2354786", "question": "Is the sky dark?", "answer": "yes",
"fullAnswer": "Yes, the sky is dark.", "isBalanced": true, "groups": {...}, "types": {...},
"semantic": [...], "semanticStr": "...", "annotations": {...}, "entailed": [...], "equivalent": [...]}``.
Images are ``images/<imageId>.jpg``. Splits: train = ``train_balanced``, validation =
``val_balanced``, test = ``testdev_balanced`` (test-dev carries answers). The output is the short
``answer``; ``fullAnswer`` stays in meta.
"""

from __future__ import annotations

from typing import Iterator

from ... import storage
from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._common import json_members, list_names

SPEC = TaskSpec(key="gqa", category="vqa", lang="en", splits=("train", "validation", "test"), rephrase=True)

SUBSET = {"train": "train_balanced", "validation": "val_balanced", "test": "testdev_balanced"}
QUESTION_DIR = "questions1.2"
IMAGE_DIR = "images"


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    if split not in SUBSET:
        raise ValueError(f"gqa has splits {SPEC.splits}; got {split!r}")
    q_path = storage.join(root, QUESTION_DIR, f"{SUBSET[split]}_questions.json")
    present = list_names(storage.join(root, IMAGE_DIR))
    # Streamed a question at a time: train_all_questions is ~14M questions in ten files of ~1.3 GB.
    for entry in json_members(SPEC.key, split, q_path):
        if isinstance(entry, Reject):
            yield Reject(SPEC.key, split, q_path, f"unusable question file: {entry.reason}")
            continue
        qid, rec = entry
        where = f"{q_path}#{qid}"
        try:
            image_id, question, answer = rec["imageId"], rec["question"], rec["answer"]
        except (KeyError, TypeError) as e:
            yield Reject(SPEC.key, split, where, f"missing field {e}")
            continue
        if not isinstance(question, str) or not isinstance(answer, str) or not question.strip() or not answer.strip():
            yield Reject(SPEC.key, split, where, "question or answer is empty or not text")
            continue
        name = f"{image_id}.jpg"
        if name not in present:
            yield Reject(SPEC.key, split, where, f"missing image file {IMAGE_DIR}/{name}")
            continue
        yield SourceInstance(
            task=SPEC.key,
            split=split,
            source_id=str(qid),
            source=where,
            inputs=question.strip(),
            outputs=answer.strip(),
            image_paths=[storage.join(root, IMAGE_DIR, name)],
            meta={
                "original_answer": answer,
                "full_answer": rec.get("fullAnswer"),
                "question_id": qid,
                "image_id": image_id,
                "types": rec.get("types"),
                "is_balanced": rec.get("isBalanced"),
            },
        )
