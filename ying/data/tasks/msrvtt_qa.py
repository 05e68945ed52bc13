"""MSRVTT-QA (Xu et al., 2017): ``{train,val,test}_qa.json``, each a JSON list of
``{"answer", "category_id", "id", "question", "video_id"}`` (``video_id`` an integer: MSR-VTT's
``video<N>``), with the clips from the MSR-VTT release: ``TrainValVideo/video<N>.mp4`` for train
and val (videos 0-7009), ``TestVideo/video<N>.mp4`` for test (7010-9999). A flat ``videos/`` folder,
as some re-packagings ship the clips, is looked in as well. Frames are sampled at build time.
"""

from __future__ import annotations

from typing import Iterator

from ... import storage
from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._common import FolderIndex, json_items

SPEC = TaskSpec(key="msrvtt-qa", category="video", lang="en", splits=("train", "validation", "test"), rephrase=True)

_QA_FILE = {"train": "train_qa.json", "validation": "val_qa.json", "test": "test_qa.json"}
# MSR-VTT's own folders per split, then the flat folder of re-packaged downloads.
VIDEO_DIRS = {"train": ("TrainValVideo", "videos"), "validation": ("TrainValVideo", "videos"),
              "test": ("TestVideo", "videos")}


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    if split not in _QA_FILE:
        raise ValueError(f"msrvtt-qa has splits {SPEC.splits}; got {split!r}")
    qa_path = storage.join(root, _QA_FILE[split])
    present = FolderIndex()
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
        folder = next((d for d in VIDEO_DIRS[split] if present.has(storage.join(root, d), name)), None)
        if folder is None:
            yield Reject(SPEC.key, split, where, f"missing video file {' or '.join(f'{d}/{name}' for d in VIDEO_DIRS[split])}")
            continue
        yield SourceInstance(
            task=SPEC.key,
            split=split,
            source_id=str(qa_id),
            source=where,
            inputs=question.strip(),
            outputs=answer.strip(),
            video_path=storage.join(root, folder, name),
            meta={"video_id": video_id, "qa_id": qa_id, "category_id": item.get("category_id")},
        )
