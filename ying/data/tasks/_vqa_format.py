"""The VQA question/annotation file pair, shared by the datasets released in that format
(VQA v2, OK-VQA): ``<questions file>`` ``{"questions": [{question_id, image_id, question}]}`` and
``<annotations file>`` ``{"annotations": [{question_id, answers: [{answer, ...}] x10,
multiple_choice_answer?, question_type, answer_type}]}``, with COCO 2014 images
``<sub>/COCO_<sub>_%012d.jpg``. Each dataset module keeps its own file names and answer rule.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Iterator

from ... import storage
from ..schema import Reject, SourceInstance
from ._common import SourceFileError, list_names, load_json

__all__ = ["majority_answer", "read_vqa_format"]


def majority_answer(answers: list[str]) -> str:
    """The most frequent non-empty answer; ties go to the first given."""
    stripped = [a.strip() for a in answers if a.strip()]
    counts = Counter(stripped)
    return max(stripped, key=lambda a: (counts[a], -stripped.index(a)))


def read_vqa_format(task: str, split: str, root: str, sub: str, questions_file: str, annotations_file: str,
                    pick_answer: Callable[[dict, list[str]], str | None]) -> Iterator[SourceInstance | Reject]:
    """One instance per question; ``pick_answer(annotation, answers)`` gives the output (None: reject)."""
    q_path = storage.join(root, questions_file)
    a_path = storage.join(root, annotations_file)
    try:
        questions = load_json(q_path)["questions"]
        annotations = load_json(a_path)["annotations"]
    except (SourceFileError, KeyError, TypeError) as e:
        yield Reject(task, split, f"{q_path} + {a_path}", f"unusable annotation files: {e}")
        return
    by_qid = {a["question_id"]: a for a in annotations if isinstance(a, dict) and "question_id" in a}
    present = list_names(storage.join(root, sub))
    for i, q in enumerate(questions):
        where = f"{q_path}#questions[{i}]"
        try:
            qid, image_id, question = q["question_id"], q["image_id"], q["question"]
        except (KeyError, TypeError) as e:
            yield Reject(task, split, where, f"missing field {e}")
            continue
        ann = by_qid.get(qid)
        if ann is None:
            yield Reject(task, split, where, f"no annotation for question_id {qid} in {a_path}")
            continue
        try:
            answers = [a["answer"] for a in ann["answers"]]
        except (KeyError, TypeError) as e:
            yield Reject(task, split, f"{a_path}#question_id={qid}", f"missing field {e}")
            continue
        answer = pick_answer(ann, answers) if all(isinstance(a, str) for a in answers) else None
        if not isinstance(question, str) or not question.strip() or not answer:
            yield Reject(task, split, where, "question or answer is empty or not text")
            continue
        filename = f"COCO_{sub}_{int(image_id):012d}.jpg"
        if filename not in present:
            yield Reject(task, split, where, f"missing image file {sub}/{filename}")
            continue
        yield SourceInstance(
            task=task,
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
