"""DocVQA (Task 1, single-page), the RRC release: one folder per split as unpacked from its tarball.

``<sub>/<sub>_v1.0.json`` (sub = train, val) is ``{"dataset_name", "dataset_split", ..., "data": [...]}``;
each record's ``image`` is relative to ``<sub>/`` (``documents/<name>.png``). Raw record:
``{"questionId": 52212, "question": "Whose signature is given?", "image": "documents/txpn0095_1.png",
"docId": 1968, "ucsf_document_id": "txpn0095", "ucsf_document_page_no": "1",
"answers": ["Edward R. Shannon", "Edward Shannon"], "data_split": "train"}``.
The output is the first answer; all answers stay in meta. The test file has no answers, so the
record splits are train and validation.
"""

from __future__ import annotations

from typing import Iterator

from ... import storage
from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._common import FolderIndex, json_items

SPEC = TaskSpec(key="docvqa", category="vqa", lang="en", splits=("train", "validation"), rephrase=True)

SUBSET = {"train": "train", "validation": "val"}


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    if split not in SUBSET:
        raise ValueError(f"docvqa has splits {SPEC.splits}; got {split!r}")
    sub = SUBSET[split]
    ann_path = storage.join(root, sub, f"{sub}_v1.0.json")
    present = FolderIndex()  # one listing per image folder
    for entry in json_items(SPEC.key, split, ann_path, "data"):
        if isinstance(entry, Reject):
            yield Reject(SPEC.key, split, ann_path, f"unusable annotation file: {entry.reason}")
            continue
        where, rec = entry
        try:
            qid, question, image, answers = rec["questionId"], rec["question"], rec["image"], rec["answers"]
        except (KeyError, TypeError) as e:
            yield Reject(SPEC.key, split, where, f"missing field {e}")
            continue
        if not isinstance(question, str) or not question.strip() or not isinstance(image, str):
            yield Reject(SPEC.key, split, where, "question or image is not text")
            continue
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers) or not answers[0].strip():
            yield Reject(SPEC.key, split, where, "answers is not a non-empty list of text")
            continue
        folder, _, name = image.rpartition("/")
        if not present.has(storage.join(root, sub, folder) if folder else storage.join(root, sub), name):
            yield Reject(SPEC.key, split, where, f"missing image file {sub}/{image}")
            continue
        yield SourceInstance(
            task=SPEC.key,
            split=split,
            source_id=str(qid),
            source=where,
            inputs=question.strip(),
            outputs=answers[0].strip(),
            image_paths=[storage.join(root, sub, image)],
            meta={
                "original_answer": answers[0],
                "answers": answers,
                "question_id": qid,
                "doc_id": rec.get("docId"),
                "ucsf_document_id": rec.get("ucsf_document_id"),
                "ucsf_document_page_no": rec.get("ucsf_document_page_no"),
                "question_types": rec.get("question_types"),
                "image": image,
            },
        )
