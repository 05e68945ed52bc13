"""A-OKVQA v1.0: ``aokvqa_v1p0_{train,val}.json`` with COCO 2017 images ``<sub>/<12-digit id>.jpg``.

Each file is a JSON list. Raw record: ``{"split": "train", "image_id": 299207,
"question_id": "22MexNkBPpdZGX6sxbxVBH", "question": "What is the man by the bags awaiting?",
"choices": ["skateboarder", "train", "delivery", "cab"], "correct_choice_idx": 3,
"direct_answers": ["ride", "ride", "bus", ...], "difficult_direct_answer": false,
"rationales": ["A train would not be on the street...", ...]}``.
The output is the correct choice; the rationales (used by the paper's rephrasing), choices and
direct answers stay in meta. The test file has no answers, so the record splits are train and
validation.
"""

from __future__ import annotations

from typing import Iterator

from ... import storage
from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._common import json_items, list_names

SPEC = TaskSpec(key="a-okvqa", category="kvqa", lang="en", splits=("train", "validation"), rephrase=True)

SUBSET = {"train": "train", "validation": "val"}


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    if split not in SUBSET:
        raise ValueError(f"a-okvqa has splits {SPEC.splits}; got {split!r}")
    sub = SUBSET[split]
    ann_path = storage.join(root, f"aokvqa_v1p0_{sub}.json")
    image_dir = f"{sub}2017"
    present = list_names(storage.join(root, image_dir))
    for entry in json_items(SPEC.key, split, ann_path):  # streamed, a question at a time
        if isinstance(entry, Reject):
            yield Reject(SPEC.key, split, ann_path, f"unusable annotation file: {entry.reason}")
            continue
        where, rec = entry
        try:
            qid, image_id, question = rec["question_id"], rec["image_id"], rec["question"]
            choices, idx = rec["choices"], rec["correct_choice_idx"]
        except (KeyError, TypeError) as e:
            yield Reject(SPEC.key, split, where, f"missing field {e}")
            continue
        if not isinstance(question, str) or not question.strip() or not isinstance(choices, list):
            yield Reject(SPEC.key, split, where, "question or choices malformed")
            continue
        if not isinstance(idx, int) or not 0 <= idx < len(choices) or not isinstance(choices[idx], str) \
                or not choices[idx].strip():
            yield Reject(SPEC.key, split, where, f"correct_choice_idx {idx!r} does not pick one of {len(choices)} choices")
            continue
        try:
            filename = f"{int(image_id):012d}.jpg"
        except (TypeError, ValueError):
            yield Reject(SPEC.key, split, where, f"image_id {image_id!r} is not a number")
            continue
        if filename not in present:
            yield Reject(SPEC.key, split, where, f"missing image file {image_dir}/{filename}")
            continue
        answer = choices[idx].strip()
        yield SourceInstance(
            task=SPEC.key,
            split=split,
            source_id=str(qid),
            source=where,
            inputs=question.strip(),
            outputs=answer,
            image_paths=[storage.join(root, image_dir, filename)],
            meta={
                "original_answer": answer,
                "question_id": qid,
                "image_id": image_id,
                "choices": choices,
                "correct_choice_idx": idx,
                "direct_answers": rec.get("direct_answers"),
                "difficult_direct_answer": rec.get("difficult_direct_answer"),
                "rationales": rec.get("rationales"),
            },
        )
