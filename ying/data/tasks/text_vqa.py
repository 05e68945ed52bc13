"""TextVQA 0.5.1: ``TextVQA_0.5.1_{train,val}.json`` plus ``train_images/<image_id>.jpg``.

Each file is ``{"dataset_name": "textvqa", "dataset_type", "dataset_version", "data": [...]}``. Raw
record: ``{"question": "what is the brand of phone?", "image_id": "0054c91397f2fe05",
"image_classes": ["Mobile phone", ...], "flickr_original_url": "...", "flickr_300k_url": "...",
"image_width": 1024, "image_height": 730, "answers": ["nokia", "nokia", ... 10 in all],
"question_tokens": [...], "question_id": 0, "set_name": "train"}``.
Train and val images both sit in ``train_images/``. The output is the most frequent of the ten
answers (ties: the first given); the test file's answers are withheld, so the record splits are
train and validation. OCR tokens (``ocr_tokens``) are kept in meta when a record carries them.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterator

from ... import storage
from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._common import json_items, list_names

SPEC = TaskSpec(key="text-vqa", category="vqa", lang="en", splits=("train", "validation"), rephrase=True)

ANN_FILE = {"train": "TextVQA_0.5.1_train.json", "validation": "TextVQA_0.5.1_val.json"}
IMAGE_DIR = "train_images"


def majority_answer(answers: list[str]) -> str:
    """The most frequent answer after stripping; ties go to the one given first."""
    stripped = [a.strip() for a in answers if a.strip()]
    counts = Counter(stripped)
    return max(stripped, key=lambda a: (counts[a], -stripped.index(a)))


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    if split not in ANN_FILE:
        raise ValueError(f"text-vqa has splits {SPEC.splits}; got {split!r}")
    ann_path = storage.join(root, ANN_FILE[split])
    present = list_names(storage.join(root, IMAGE_DIR))
    for entry in json_items(SPEC.key, split, ann_path, "data"):
        if isinstance(entry, Reject):
            yield Reject(SPEC.key, split, ann_path, f"unusable annotation file: {entry.reason}")
            continue
        where, rec = entry
        try:
            qid, question, image_id, answers = rec["question_id"], rec["question"], rec["image_id"], rec["answers"]
        except (KeyError, TypeError) as e:
            yield Reject(SPEC.key, split, where, f"missing field {e}")
            continue
        if not isinstance(question, str) or not question.strip():
            yield Reject(SPEC.key, split, where, "question is not text")
            continue
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers) or not any(a.strip() for a in answers):
            yield Reject(SPEC.key, split, where, "answers is not a non-empty list of text")
            continue
        name = f"{image_id}.jpg"
        if name not in present:
            yield Reject(SPEC.key, split, where, f"missing image file {IMAGE_DIR}/{name}")
            continue
        answer = majority_answer(answers)
        meta = {
            "original_answer": answer,
            "answers": answers,
            "question_id": qid,
            "image_id": image_id,
            "image_classes": rec.get("image_classes"),
            "flickr_original_url": rec.get("flickr_original_url"),
            "set_name": rec.get("set_name"),
        }
        if "ocr_tokens" in rec:
            meta["ocr_tokens"] = rec["ocr_tokens"]
        yield SourceInstance(
            task=SPEC.key,
            split=split,
            source_id=str(qid),
            source=where,
            inputs=question.strip(),
            outputs=answer,
            image_paths=[storage.join(root, IMAGE_DIR, name)],
            meta=meta,
        )
