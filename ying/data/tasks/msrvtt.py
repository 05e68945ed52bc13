"""MSR-VTT captioning (Xu et al., 2016): ``train_val_videodatainfo.json`` and
``test_videodatainfo.json``, each ``{"videos": [{video_id, split, ...}], "sentences": [{video_id,
caption, sen_id}]}`` with ``split`` one of ``train``/``validate``/``test``, and the clips
``TrainValVideo/<video_id>.mp4`` (train and validate) and ``TestVideo/<video_id>.mp4`` (test).

Raw records: ``{"video_id": "video0", "split": "train", "category": 9, ...}`` and
``{"caption": "a car is shown", "video_id": "video0", "sen_id": 0}``.

One instance per caption (``sen_id``).
"""

from __future__ import annotations

from typing import Iterator

from ... import storage
from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._common import json_items, list_names

SPEC = TaskSpec(key="msrvtt", category="video", lang="en", splits=("train", "validation", "test"), rephrase=False)

_SOURCE = {
    "train": ("train_val_videodatainfo.json", "train", "TrainValVideo"),
    "validation": ("train_val_videodatainfo.json", "validate", "TrainValVideo"),
    "test": ("test_videodatainfo.json", "test", "TestVideo"),
}


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    if split not in _SOURCE:
        raise ValueError(f"msrvtt has splits {SPEC.splits}; got {split!r}")
    filename, source_split, video_dir = _SOURCE[split]
    path = storage.join(root, filename)
    # Two streamed passes: the split's videos (10k entries at most), then the sentences one at a time.
    ours: dict = {}
    for entry in json_items(SPEC.key, split, path, "videos"):
        if isinstance(entry, Reject):
            yield Reject(SPEC.key, split, path, f"unusable annotation file: {entry.reason}")
            return
        v = entry[1]
        if isinstance(v, dict) and v.get("split") == source_split and "video_id" in v:
            ours[v["video_id"]] = {"category": v.get("category")}
    present = list_names(storage.join(root, video_dir))
    for entry in json_items(SPEC.key, split, path, "sentences"):
        if isinstance(entry, Reject):
            yield Reject(SPEC.key, split, path, f"unusable annotation file: {entry.reason}")
            continue
        where, sent = entry
        if not isinstance(sent, dict):
            yield Reject(SPEC.key, split, where, "sentence is not an object")
            continue
        video_id = sent.get("video_id")
        if video_id not in ours:
            continue  # another split's video (a sentence without video_id is reported below only if ours)
        try:
            caption, sen_id = sent["caption"], sent["sen_id"]
        except KeyError as e:
            yield Reject(SPEC.key, split, where, f"missing field {e}")
            continue
        if not isinstance(caption, str) or not caption.strip():
            yield Reject(SPEC.key, split, where, "caption is not text")
            continue
        name = f"{video_id}.mp4"
        if name not in present:
            yield Reject(SPEC.key, split, where, f"missing video file {video_dir}/{name}")
            continue
        yield SourceInstance(
            task=SPEC.key,
            split=split,
            source_id=str(sen_id),
            source=where,
            inputs="",
            outputs=caption.strip(),
            video_path=storage.join(root, video_dir, name),
            meta={"video_id": video_id, "sen_id": sen_id, "category": ours[video_id].get("category")},
        )
