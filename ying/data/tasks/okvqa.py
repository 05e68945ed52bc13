"""OK-VQA (v1.1): VQA-format ``OpenEnded_mscoco_<sub>_questions.json`` + ``mscoco_<sub>_annotations.json``
with COCO 2014 images ``<sub>/COCO_<sub>_%012d.jpg`` (sub = train2014, val2014).

Questions: ``{"questions": [{"image_id": 51606, "question": "What is the hairstyle of the blond
called?", "question_id": 516065}], ...}``; annotations: ``{"annotations": [{"question_id": 516065,
"image_id": 51606, "question_type": "four", "answer_type": "other", "confidence": 3,
"answers": [{"answer_id": 1, "raw_answer": "pony tail", "answer": "pony tail",
"answer_confidence": "yes"}, ... 10 in all]}]}``.
The output is ``multiple_choice_answer`` when the file has it, else the most frequent of the ten
answers (ties: the first given); all ten stay in meta.
"""

from __future__ import annotations

from typing import Iterator

from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._vqa_format import majority_answer, read_vqa_format

SPEC = TaskSpec(key="okvqa", category="kvqa", lang="en", splits=("train", "validation"), rephrase=True)

SUBTYPE = {"train": "train2014", "validation": "val2014"}


def _answer(annotation: dict, answers: list[str]) -> str | None:
    mc = annotation.get("multiple_choice_answer")
    if isinstance(mc, str) and mc.strip():
        return mc.strip()
    return majority_answer(answers) if any(a.strip() for a in answers) else None


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    if split not in SUBTYPE:
        raise ValueError(f"okvqa has splits {SPEC.splits}; got {split!r}")
    sub = SUBTYPE[split]
    yield from read_vqa_format(SPEC.key, split, root, sub, f"OpenEnded_mscoco_{sub}_questions.json",
                               f"mscoco_{sub}_annotations.json", _answer)
