"""ScienceQA: ``problems.json`` + ``pid_splits.json`` and ``images/<split>/<pid>/image.png``.

``problems.json`` maps a problem id to ``{"question", "choices", "answer" (index), "hint", "image"
("image.png" or null), "task", "grade", "subject", "topic", "category", "skill", "lecture",
"solution", "split"}``; ``pid_splits.json`` lists the ids of ``train``/``val``/``test`` (and
mini/trainval variants, unused). Raw record: ``"5": {"question": "Which figure of speech is used
in this text?", "choices": ["chiasmus", "apostrophe"], "answer": 1, "hint": "...", "image": null,
"split": "train", ...}``.
Only problems with an image are read. The input is the context (hint, when not empty), the question
and the lettered choices; the output is the lettered correct choice, e.g. ``(B) apostrophe``.
"""

from __future__ import annotations

from typing import Iterator

from ... import storage
from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._common import SourceFileError, list_names, load_json
from ._options import LETTERS, format_options

SPEC = TaskSpec(key="science-qa", category="kvqa", lang="en", splits=("train", "validation", "test"), rephrase=True)

SUBSET = {"train": "train", "validation": "val", "test": "test"}
IMAGE_DIR = "images"


def build_inputs(hint: str, question: str, choices: list[str]) -> str:
    parts = [f"Context: {hint.strip()}"] if hint and hint.strip() else []
    parts.append(f"Question: {question.strip()}")
    parts.append(format_options(choices))
    return "\n".join(parts)


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    if split not in SUBSET:
        raise ValueError(f"science-qa has splits {SPEC.splits}; got {split!r}")
    sub = SUBSET[split]
    p_path = storage.join(root, "problems.json")
    s_path = storage.join(root, "pid_splits.json")
    try:
        problems = load_json(p_path)
        pids = load_json(s_path)[sub]
        if not isinstance(problems, dict) or not isinstance(pids, list):
            raise SourceFileError("problems.json must be an object and pid_splits.json a list per split")
    except (SourceFileError, KeyError, TypeError) as e:
        yield Reject(SPEC.key, split, f"{p_path} + {s_path}", f"unusable annotation files: {e}")
        return
    image_root = storage.join(root, IMAGE_DIR, sub)
    for pid in pids:
        pid = str(pid)
        where = f"{p_path}#{pid}"
        rec = problems.get(pid)
        if not isinstance(rec, dict):
            yield Reject(SPEC.key, split, where, f"problem {pid} listed in {s_path} is not in problems.json")
            continue
        image = rec.get("image")
        if not image:
            continue  # text-only problems are not part of this task
        try:
            question, choices, answer = rec["question"], rec["choices"], rec["answer"]
        except KeyError as e:
            yield Reject(SPEC.key, split, where, f"missing field {e}")
            continue
        if not isinstance(question, str) or not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            yield Reject(SPEC.key, split, where, "question or choices malformed")
            continue
        if not isinstance(answer, int) or not 0 <= answer < len(choices) or len(choices) > len(LETTERS):
            yield Reject(SPEC.key, split, where, f"answer index {answer!r} does not pick one of {len(choices)} choices")
            continue
        if image not in list_names(storage.join(image_root, pid)):
            yield Reject(SPEC.key, split, where, f"missing image file {IMAGE_DIR}/{sub}/{pid}/{image}")
            continue
        hint = rec.get("hint") or ""
        gold = choices[answer]
        yield SourceInstance(
            task=SPEC.key,
            split=split,
            source_id=pid,
            source=where,
            inputs=build_inputs(hint, question, choices),
            outputs=f"({LETTERS[answer]}) {gold}",
            image_paths=[storage.join(image_root, pid, image)],
            meta={
                "original_answer": gold,
                "answer_index": answer,
                "problem_id": pid,
                "choices": choices,
                "hint": hint,
                "lecture": rec.get("lecture"),
                "solution": rec.get("solution"),
                "subject": rec.get("subject"),
                "topic": rec.get("topic"),
                "grade": rec.get("grade"),
                "skill": rec.get("skill"),
            },
        )
