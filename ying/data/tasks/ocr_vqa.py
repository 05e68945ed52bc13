"""OCR-VQA: ``dataset.json`` plus the book covers fetched by the release's ``loadDataset.py``.

``dataset.json`` maps an image id to ``{"imageURL", "questions": [...], "answers": [...], "title",
"authorName", "genre", "split"}`` with split 1 = train, 2 = val, 3 = test. Raw record:
``"761183272": {"imageURL": "http://ecx.images-amazon.com/images/I/61Y5cOdHJbL.jpg",
"questions": ["Who wrote this book?", ...], "answers": ["Sandra Boynton", ...], "title": "...",
"authorName": "Sandra Boynton", "genre": "Calendars", "split": 1}``.
``loadDataset.py`` saves each cover as ``images/<id><extension of imageURL>`` (nearly all ``.jpg``).
One instance per (image, question).
"""

from __future__ import annotations

import posixpath
from typing import Iterator

from ... import storage
from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._common import json_members, list_names

SPEC = TaskSpec(key="ocr-vqa", category="vqa", lang="en", splits=("train", "validation", "test"), rephrase=True)

SPLIT_CODE = {"train": 1, "validation": 2, "test": 3}
IMAGE_DIR = "images"


def image_name(image_id: str, url: str) -> str:
    ext = posixpath.splitext(url.split("?", 1)[0])[1] or ".jpg"
    return f"{image_id}{ext}"


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    if split not in SPLIT_CODE:
        raise ValueError(f"ocr-vqa has splits {SPEC.splits}; got {split!r}")
    ann_path = storage.join(root, "dataset.json")
    present = list_names(storage.join(root, IMAGE_DIR))
    for entry in json_members(SPEC.key, split, ann_path):  # streamed: one book's entry at a time
        if isinstance(entry, Reject):
            yield Reject(SPEC.key, split, ann_path, f"unusable annotation file: {entry.reason}")
            continue
        image_id, rec = entry
        where = f"{ann_path}#{image_id}"
        try:
            if rec["split"] != SPLIT_CODE[split]:
                continue
            url, questions, answers = rec["imageURL"], rec["questions"], rec["answers"]
        except (KeyError, TypeError) as e:
            yield Reject(SPEC.key, split, where, f"missing field {e}")
            continue
        if not isinstance(questions, list) or not isinstance(answers, list) or len(questions) != len(answers):
            yield Reject(SPEC.key, split, where, "questions and answers are not lists of the same length")
            continue
        name = image_name(image_id, str(url))
        if name not in present:
            yield Reject(SPEC.key, split, where, f"missing image file {IMAGE_DIR}/{name}")
            continue
        for j, (question, answer) in enumerate(zip(questions, answers)):
            if not isinstance(question, str) or not isinstance(answer, str) or not question.strip() or not answer.strip():
                yield Reject(SPEC.key, split, f"{where}.questions[{j}]", "question or answer is empty or not text")
                continue
            yield SourceInstance(
                task=SPEC.key,
                split=split,
                source_id=f"{image_id}-{j}",
                source=f"{where}.questions[{j}]",
                inputs=question.strip(),
                outputs=answer.strip(),
                image_paths=[storage.join(root, IMAGE_DIR, name)],
                meta={
                    "original_answer": answer,
                    "image_id": image_id,
                    "question_index": j,
                    "image_url": url,
                    "title": rec.get("title"),
                    "author": rec.get("authorName"),
                    "genre": rec.get("genre"),
                },
            )
