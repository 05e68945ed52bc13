"""Source adapters: one module per dataset, each knowing only its own files.

Each module exposes ``SPEC`` (a ``TaskSpec``) and ``read_instances(root, split)``, which yields
``SourceInstance`` for good records and ``Reject`` for bad ones and never raises on bad data.
The registry below is a plain dict built from plain imports: adding a dataset is one new module,
one line here and one instruction pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

__all__ = ["TaskSpec", "TASKS", "get_task"]


@dataclass(frozen=True)
class TaskSpec:
    key: str  # the M3IT config name, e.g. "vqa-v2"
    category: str  # one of schema.CATEGORIES
    lang: str  # "en" or "zh"
    splits: tuple[str, ...]  # record splits this source has, from train/validation/test
    rephrase: bool  # whether its short answers are meant to be rephrased into sentences


from . import coco, coco_goi, flickr8k_cn, msrvtt_qa, vqa_v2  # noqa: E402  (TaskSpec first)

TASKS: dict[str, ModuleType] = {
    coco.SPEC.key: coco,
    vqa_v2.SPEC.key: vqa_v2,
    coco_goi.SPEC.key: coco_goi,
    flickr8k_cn.SPEC.key: flickr8k_cn,
    msrvtt_qa.SPEC.key: msrvtt_qa,
}


def get_task(key: str) -> ModuleType:
    """The adapter module for a task key; a clear error listing the known keys otherwise."""
    try:
        return TASKS[key]
    except KeyError:
        raise KeyError(f"unknown task {key!r}; known tasks: {sorted(TASKS)}") from None
