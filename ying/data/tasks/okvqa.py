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

from collections import Counter
from typing import Iterator

from ... import storage
from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._common import SourceFileError, list_names, load_json

SPEC = TaskSpec(key="okvqa", category="kvqa", lang="en", splits=("train", "validation"), rephrase=True)

SUBTYPE = {"train": "train2014", "validation": "val2014"}


def majority_answer(answers: list[str]) -> str:
    stripped = [a.strip() for a in answers if a.strip()]
    counts = Counter(stripped)
    return max(stripped, key=lambda a: (counts[a], -stripped.index(a)))


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    if split not in SUBTYPE:
        raise ValueError(f"okvqa has splits {SPEC.splits}; got {split!r}")
    sub = SUBTYPE[split]
    q_path = storage.join(root, f"OpenEnded_mscoco_{sub}_questions.json")
    a_path = storage.join(root, f"mscoco_{sub}_annotations.json")
    try:
        questions = load_json(q_path)["questions"]
        annotations = load_json(a_path)["annotations"]
    except (SourceFileError, KeyError, TypeError) as e:
        yield Reject(SPEC.key, split, f"{q_path} + {a_path}", f"unusable annotation files: {e}")
        return
    by_qid = {a["question_id"]: a for a in annotations if isinstance(a, dict) and "question_id" in a}
    present = list_names(storage.join(root, sub))
    for i, q in enumerate(questions):
        where = f"{q_path}#questions[{i}]"
        try:
            qid, image_id, question = q["question_id"], q["image_id"], q["question"]
        except (KeyError, TypeError) as e:
            yield Reject(SPEC.key, split, where, f"missing field {e}")
            continue
        ann = by_qid.get(qid)
        if ann is None:
            yield Reject(SPEC.key, split, where, f"no annotation for question_id {qid} in {a_path}")
            continue
        try:
            answers = [a["answer"] for a in ann["answers"]]
        except (KeyError, TypeError) as e:
            yield Reject(SPEC.key, split, f"{a_path}#question_id={qid}", f"missing field {e}")
            continue
        if not isinstance(question, str) or not question.strip() or not all(isinstance(a, str) for a in answers) \
                or not any(a.strip() for a in answers):
            yield Reject(SPEC.key, split, where, "question or answers are empty or not text")
            continue
        mc = ann.get("multiple_choice_answer")
        answer = mc.strip() if isinstance(mc, str) and mc.strip() else majority_answer(answers)
        filename = f"COCO_{sub}_{int(image_id):012d}.jpg"
        if filename not in present:
            yield Reject(SPEC.key, split, where, f"missing image file {sub}/{filename}")
            continue
        yield SourceInstance(
            task=SPEC.key,
            split=split,
            source_id=str(qid),
            source=where,
            inputs=question.strip(),
            outputs=answer,
            image_paths=[storage.join(root, sub, filename)],
            meta={
                "original_answer": answer,
                "answers": answers,
                "question_id": qid,
                "image_id": image_id,
                "question_type": ann.get("question_type"),
                "answer_type": ann.get("answer_type"),
            },
        )
