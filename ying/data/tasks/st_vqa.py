"""ST-VQA (Scene Text VQA, ICDAR 2019 RRC): ``train_task_3.json`` + the ``train_imgs/`` image folder.

The annotation file is ``{"dataset_name", "dataset_version", ..., "data": [...]}``; each record's
``file_path`` is ``<source dataset>/<file name>`` inside the unpacked ``train_imgs/``. Raw record:
``{"question_id": 1, "question": "What is the price of the bananas?", "answers": ["0.99", "0.99"],
"file_path": "coco-text/COCO_train2014_000000159102.jpg", "dataset": "coco-text",
"file_name": "COCO_train2014_000000159102.jpg", "set_name": "train", ...}``.
Tasks 1-3 share the training questions (tasks 1/2 add per-image dictionaries), so the task-3 file is
read. The public test files carry no answers, so the only record split is train.
"""

from __future__ import annotations

from typing import Iterator

from ... import storage
from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._common import FolderIndex, json_items

SPEC = TaskSpec(key="st-vqa", category="vqa", lang="en", splits=("train",), rephrase=True)

ANN_FILE = {"train": "train_task_3.json"}
IMAGE_DIR = {"train": "train_imgs"}


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    if split not in ANN_FILE:
        raise ValueError(f"st-vqa has splits {SPEC.splits}; got {split!r}")
    ann_path = storage.join(root, ANN_FILE[split])
    image_dir = IMAGE_DIR[split]
    present = FolderIndex()  # one listing per image folder
    for entry in json_items(SPEC.key, split, ann_path, "data"):
        if isinstance(entry, Reject):
            yield Reject(SPEC.key, split, ann_path, f"unusable annotation file: {entry.reason}")
            continue
        where, rec = entry
        try:
            qid, question, answers, file_path = rec["question_id"], rec["question"], rec["answers"], rec["file_path"]
        except (KeyError, TypeError) as e:
            yield Reject(SPEC.key, split, where, f"missing field {e}")
            continue
        if not isinstance(question, str) or not question.strip() or not isinstance(file_path, str):
            yield Reject(SPEC.key, split, where, "question or file_path is not text")
            continue
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers) or not answers[0].strip():
            yield Reject(SPEC.key, split, where, "answers is not a non-empty list of text")
            continue
        folder, _, name = file_path.rpartition("/")
        if not present.has(storage.join(root, image_dir, folder) if folder else storage.join(root, image_dir), name):
            yield Reject(SPEC.key, split, where, f"missing image file {image_dir}/{file_path}")
            continue
        yield SourceInstance(
            task=SPEC.key,
            split=split,
            source_id=str(qid),
            source=where,
            inputs=question.strip(),
            outputs=answers[0].strip(),
            image_paths=[storage.join(root, image_dir, file_path)],
            meta={
                "original_answer": answers[0],
                "answers": answers,
                "question_id": qid,
                "file_path": file_path,
                "source_dataset": rec.get("dataset"),
                "set_name": rec.get("set_name"),
            },
        )
