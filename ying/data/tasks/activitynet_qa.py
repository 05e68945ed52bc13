"""ActivityNet-QA (Yu et al., 2019): per split, ``<split>_q.json`` (``[{video_name, question,
question_id}]``) and ``<split>_a.json`` (``[{answer, type, question_id}]``), for ``train``,
``val`` and ``test``, plus the ActivityNet videos ``videos/v_<video_name>.<mp4|mkv|webm>``.

Raw records: ``{"video_name": "TIEzvhv6xaI", "question": "is the no.3 athlete playing indoor",
"question_id": "v_TIEzvhv6xaI_2"}`` and ``{"answer": "yes", "type": 3, "question_id": "v_TIEzvhv6xaI_2"}``.
"""

from __future__ import annotations

from typing import Iterator

from ... import storage
from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._common import SourceFileError, list_names, load_json

SPEC = TaskSpec(key="activitynet-qa", category="video", lang="en", splits=("train", "validation", "test"), rephrase=True)

_PREFIX = {"train": "train", "validation": "val", "test": "test"}
VIDEO_DIR = "videos"
VIDEO_EXTS = (".mp4", ".mkv", ".webm")


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    if split not in _PREFIX:
        raise ValueError(f"activitynet-qa has splits {SPEC.splits}; got {split!r}")
    q_path = storage.join(root, f"{_PREFIX[split]}_q.json")
    a_path = storage.join(root, f"{_PREFIX[split]}_a.json")
    try:
        questions, answers = load_json(q_path), load_json(a_path)
        if not isinstance(questions, list) or not isinstance(answers, list):
            raise SourceFileError("expected JSON lists")
    except SourceFileError as e:
        yield Reject(SPEC.key, split, f"{q_path} + {a_path}", f"unusable annotation files: {e}")
        return
    by_qid = {a["question_id"]: a for a in answers if isinstance(a, dict) and "question_id" in a}
    present = list_names(storage.join(root, VIDEO_DIR))
    for i, q in enumerate(questions):
        where = f"{q_path}#[{i}]"
        try:
            qid, video_name, question = q["question_id"], q["video_name"], q["question"]
        except (KeyError, TypeError) as e:
            yield Reject(SPEC.key, split, where, f"missing field {e}")
            continue
        ann = by_qid.get(qid)
        if ann is None:
            yield Reject(SPEC.key, split, where, f"no answer for question_id {qid} in {a_path}")
            continue
        answer = ann.get("answer")
        if not isinstance(question, str) or not isinstance(answer, str) or not answer.strip():
            yield Reject(SPEC.key, split, where, "question or answer is not text")
            continue
        name = next((f"v_{video_name}{ext}" for ext in VIDEO_EXTS if f"v_{video_name}{ext}" in present), None)
        if name is None:
            yield Reject(SPEC.key, split, where, f"missing video file {VIDEO_DIR}/v_{video_name}.mp4")
            continue
        yield SourceInstance(
            task=SPEC.key,
            split=split,
            source_id=str(qid),
            source=where,
            inputs=question.strip(),
            outputs=answer.strip(),
            video_path=storage.join(root, VIDEO_DIR, name),
            meta={"question_id": qid, "video_name": video_name, "type": ann.get("type"), "original_answer": answer},
        )
