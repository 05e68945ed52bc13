"""MSVD-QA (Xu et al., 2017): ``train_qa.json``, ``val_qa.json`` and ``test_qa.json`` (lists of
``{answer, id, question, video_id}``, where ``video_id`` is the number N of ``vid<N>``),
``youtube_mapping.txt`` (lines ``<YouTube clip name> vid<N>``) and the MSVD clips
``YouTubeClips/<YouTube clip name>.avi``.

Raw record: ``{"answer": "man", "id": 0, "question": "who is slicing a potato?", "video_id": 1}``;
mapping line: ``-4wsuPCjDBc_5_15 vid1``.
"""

from __future__ import annotations

from typing import Iterator

from ... import storage
from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._common import SourceFileError, list_names, load_json, read_bytes

SPEC = TaskSpec(key="msvd-qa", category="video", lang="en", splits=("train", "validation", "test"), rephrase=True)

_QA_FILE = {"train": "train_qa.json", "validation": "val_qa.json", "test": "test_qa.json"}
MAPPING_FILE = "youtube_mapping.txt"
VIDEO_DIR = "YouTubeClips"


def _load_mapping(path: str) -> dict[int, str]:
    mapping: dict[int, str] = {}
    for line in read_bytes(path).decode("utf-8", "replace").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].startswith("vid") and parts[1][3:].isdigit():
            mapping[int(parts[1][3:])] = parts[0]
    if not mapping:
        raise SourceFileError(f"{path}: no '<clip name> vid<N>' lines")
    return mapping


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    if split not in _QA_FILE:
        raise ValueError(f"msvd-qa has splits {SPEC.splits}; got {split!r}")
    qa_path = storage.join(root, _QA_FILE[split])
    map_path = storage.join(root, MAPPING_FILE)
    try:
        mapping = _load_mapping(map_path)
        items = load_json(qa_path)
        if not isinstance(items, list):
            raise SourceFileError(f"{qa_path}: expected a JSON list")
    except SourceFileError as e:
        yield Reject(SPEC.key, split, f"{qa_path} + {map_path}", str(e))
        return
    present = list_names(storage.join(root, VIDEO_DIR))
    for i, item in enumerate(items):
        where = f"{qa_path}#[{i}]"
        try:
            question, answer, video_id, qa_id = item["question"], item["answer"], item["video_id"], item["id"]
        except (KeyError, TypeError) as e:
            yield Reject(SPEC.key, split, where, f"missing field {e}")
            continue
        if not isinstance(question, str) or not isinstance(answer, str) or not answer.strip():
            yield Reject(SPEC.key, split, where, "question or answer is not text")
            continue
        clip = mapping.get(video_id) if isinstance(video_id, int) else None
        if clip is None:
            yield Reject(SPEC.key, split, where, f"video_id {video_id!r} has no vid{video_id} line in {MAPPING_FILE}")
            continue
        name = f"{clip}.avi"
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
            meta={"qa_id": qa_id, "video_id": video_id, "youtube_clip": clip, "original_answer": answer},
        )
