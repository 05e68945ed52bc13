"""MSRVTT-QA: ``{train,val,test}_qa.json`` (lists of {question, answer, video_id, id}) and the
MSR-VTT clips ``videos/video<video_id>.mp4``. Frames are sampled at build time."""

from __future__ import annotations

from typing import Iterator

from ... import storage
from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._common import json_items, list_names

SPEC = TaskSpec(key="msrvtt-qa", category="video", lang="en", splits=("train", "validation", "test"), rephrase=True)

_QA_FILE = {"train": "train_qa.json", "validation": "val_qa.json", "test": "test_qa.json"}
VIDEO_DIR = "videos"


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    if split not in _QA_FILE:
        raise ValueError(f"msrvtt-qa has splits {SPEC.splits}; got {split!r}")
    qa_path = storage.join(root, _QA_FILE[split])
    present = list_names(storage.join(root, VIDEO_DIR))
    for entry in json_items(SPEC.key, split, qa_path, ""):
        if isinstance(entry, Reject):
            yield Reject(SPEC.key, split, qa_path, f"unusable QA file: {entry.reason}")
            continue
        where, item = entry
        try:
            question, answer, video_id, qa_id = item["question"], item["answer"], item["video_id"], item["id"]
        except (KeyError, TypeError) as e:
            yield Reject(SPEC.key, split, where, f"missing field {e}")
            continue
        if not isinstance(question, str) or not isinstance(answer, str) or not answer.strip():
            yield Reject(SPEC.key, split, where, "question or answer is not text")
            continue
        name = f"video{video_id}.mp4"
        if name not in present:
            yield Reject(SPEC.key, split, where, f"missing video file {VIDEO_DIR}/{name}")
            continue
        yield SourceInstance(
            task=SPEC.key,
            split=split,
            source_id=str(qa_id),
            source=where,
            inputs=question.strip(),
            outputs=answer.strip(),
            video_path=storage.join(root, VIDEO_DIR, name),
            meta={"video_id": video_id, "qa_id": qa_id},
        )
