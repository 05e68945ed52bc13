"""VQA v2: ``v2_OpenEnded_mscoco_<sub>_questions.json`` + ``v2_mscoco_<sub>_annotations.json``.

Images are ``<sub>/COCO_<sub>_%012d.jpg``. The output is ``multiple_choice_answer``; all ten human
answers stay in meta. There are no public test answers, so the splits are train and validation.
"""

from __future__ import annotations

from typing import Iterator

from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._vqa_format import read_vqa_format

SPEC = TaskSpec(key="vqa-v2", category="vqa", lang="en", splits=("train", "validation"), rephrase=True)

_SUBTYPE = {"train": "train2014", "validation": "val2014"}


def _multiple_choice_answer(annotation: dict, answers: list[str]) -> str | None:
    mc = annotation.get("multiple_choice_answer")
    return mc.strip() if isinstance(mc, str) and mc.strip() else None


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    if split not in _SUBTYPE:
        raise ValueError(f"vqa-v2 has splits {SPEC.splits}; got {split!r}")
    sub = _SUBTYPE[split]
    yield from read_vqa_format(SPEC.key, split, root, sub, f"v2_OpenEnded_mscoco_{sub}_questions.json",
                               f"v2_mscoco_{sub}_annotations.json", _multiple_choice_answer)
