"""VQA v2: ``v2_OpenEnded_mscoco_<sub>_questions.json`` + ``v2_mscoco_<sub>_annotations.json``.

Images are ``<sub>/COCO_<sub>_%012d.jpg``. The output is ``multiple_choice_answer``; all ten human
answers stay in meta. There are no public test answers, so the splits are train and validation.
"""

from __future__ import annotations

from typing import Iterator

from ... import storage
from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._common import SourceFileError, list_names, load_json

SPEC = TaskSpec(key="vqa-v2", category="vqa", lang="en", splits=("train", "validation"), rephrase=True)

_SUBTYPE = {"train": "train2014", "validation": "val2014"}


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    if split not in _SUBTYPE:
        raise ValueError(f"vqa-v2 has splits {SPEC.splits}; got {split!r}")
    sub = _SUBTYPE[split]
    q_path = storage.join(root, f"v2_OpenEnded_mscoco_{sub}_questions.json")
    a_path = storage.join(root, f"v2_mscoco_{sub}_annotations.json")
    try:
        questions = load_json(q_path)["questions"]
        annotations = load_json(a_path)["annotations"]
    except (SourceFileError, KeyError, TypeError) as e:
        yield Reject(SPEC.key, split, f"{q_path} + {a_path}", f"unusable annotation files: {e}")
        return
    by_qid = {}
    for a in annotations:
        if isinstance(a, dict) and "question_id" in a:
            by_qid[a["question_id"]] = a
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
            answer = ann["multiple_choice_answer"]
            answers = [a["answer"] for a in ann["answers"]]
        except (KeyError, TypeError) as e:
            yield Reject(SPEC.key, split, f"{a_path}#question_id={qid}", f"missing field {e}")
            continue
        if not isinstance(question, str) or not isinstance(answer, str) or not answer.strip():
            yield Reject(SPEC.key, split, where, "question or answer is not text")
            continue
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
            outputs=answer.strip(),
            image_paths=[storage.join(root, sub, filename)],
            meta={
                "question_id": qid,
                "image_id": image_id,
                "answers": answers,
                "answer_type": ann.get("answer_type"),
                "question_type": ann.get("question_type"),
            },
        )
