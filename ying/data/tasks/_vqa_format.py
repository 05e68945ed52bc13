"""The VQA question/annotation file pair, shared by the datasets released in that format
(VQA v2, OK-VQA): ``<questions file>`` ``{"questions": [{question_id, image_id, question}]}`` and
``<annotations file>`` ``{"annotations": [{question_id, answers: [{answer, ...}] x10,
multiple_choice_answer?, question_type, answer_type}]}``, with COCO 2014 images
``<sub>/COCO_<sub>_%012d.jpg``. Each dataset module keeps its own file names and answer rule.
Both files are streamed, never loaded whole (VQA v2's train annotations are ~330 MB of JSON).
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Iterator

from ... import storage
from ..schema import Reject, SourceInstance
from ._common import json_items, list_names

__all__ = ["majority_answer", "read_vqa_format"]


def majority_answer(answers: list[str]) -> str:
    """The most frequent non-empty answer; ties go to the first given."""
    stripped = [a.strip() for a in answers if a.strip()]
    counts = Counter(stripped)
    return max(stripped, key=lambda a: (counts[a], -stripped.index(a)))


def _paired(task: str, split: str, q_path: str, a_path: str) -> Iterator[tuple[str, dict, dict | None] | Reject]:
    """``(where, question, annotation)`` per question, the annotation found by ``question_id``
    (None: there is none), streaming both files side by side.

    The releases list the same question ids in the same order in both files, so the walk holds one
    entry of each; where the orders differ, an entry waits in a dict until its partner comes, so any
    order gives the same pairs (memory then grows with how far apart the two orders are)."""
    questions = json_items(task, split, q_path, "questions")
    annotations = json_items(task, split, a_path, "annotations")
    waiting_q: dict = {}  # question_id -> (where, question) with no annotation yet
    waiting_a: dict = {}  # question_id -> annotation with no question yet
    q_done = a_done = False
    while not q_done:
        entry = next(questions, None)
        if entry is None:
            q_done = True
        elif isinstance(entry, Reject):  # the questions file is missing or broken: nothing more to pair
            yield Reject(task, split, f"{q_path} + {a_path}", f"unusable questions file: {entry.reason}")
            return
        else:
            where, q = entry
            qid = q.get("question_id") if isinstance(q, dict) else None
            if qid is None or isinstance(qid, (dict, list)):
                yield where, q, None  # the caller names the missing field
            elif qid in waiting_a:
                yield where, q, waiting_a.pop(qid)
            else:
                waiting_q[qid] = (where, q)
        if not a_done:
            ann = next(annotations, None)
            if ann is None:
                a_done = True
            elif isinstance(ann, Reject):
                yield Reject(task, split, f"{q_path} + {a_path}", f"unusable annotation file: {ann.reason}")
                return
            else:
                _, a = ann
                qid = a.get("question_id") if isinstance(a, dict) else None
                if qid is None or isinstance(qid, (dict, list)):
                    continue
                if qid in waiting_q:
                    where, q = waiting_q.pop(qid)
                    yield where, q, a
                else:
                    waiting_a[qid] = a
    for ann in annotations:  # more annotations than questions: pair the questions still waiting
        if isinstance(ann, Reject):
            yield Reject(task, split, f"{q_path} + {a_path}", f"unusable annotation file: {ann.reason}")
            return
        _, a = ann
        qid = a.get("question_id") if isinstance(a, dict) else None
        if qid in waiting_q:
            where, q = waiting_q.pop(qid)
            yield where, q, a
    for where, q in waiting_q.values():
        yield where, q, None


def read_vqa_format(task: str, split: str, root: str, sub: str, questions_file: str, annotations_file: str,
                    pick_answer: Callable[[dict, list[str]], str | None]) -> Iterator[SourceInstance | Reject]:
    """One instance per question; ``pick_answer(annotation, answers)`` gives the output (None: reject).
    Both files are streamed (``_paired``): a 300 MB annotation file is never held whole."""
    q_path = storage.join(root, questions_file)
    a_path = storage.join(root, annotations_file)
    present: set[str] | None = None
    for entry in _paired(task, split, q_path, a_path):
        if isinstance(entry, Reject):
            yield entry
            continue
        where, q, ann = entry
        try:
            qid, image_id, question = q["question_id"], q["image_id"], q["question"]
        except (KeyError, TypeError) as e:
            yield Reject(task, split, where, f"missing field {e}")
            continue
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
        try:
            filename = f"COCO_{sub}_{int(image_id):012d}.jpg"
        except (TypeError, ValueError):
            yield Reject(task, split, where, f"image_id {image_id!r} is not a number")
            continue
        if present is None:  # listed once, on the first question that needs it
            present = list_names(storage.join(root, sub))
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
