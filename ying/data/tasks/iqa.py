"""IQA: image quality levels from mean opinion scores. ASSUMED SOURCE FORMAT, READ THIS.

The paper cites Duanmu et al. (2021), "Quantifying visual image quality: a Bayesian view", a
review article that releases no data files; the concrete release behind M3IT's ``iqa`` task could
not be confirmed. This adapter therefore implements the most plausible documented layout of a
MOS-labelled in-the-wild IQA release, KonIQ-10k (github.com/subpic/koniq, ``metadata/``):

- ``koniq10k_distributions_sets.csv``: header
  ``image_name,c1,c2,c3,c4,c5,c_total,MOS,SD,set``, e.g.
  ``10004473376.jpg,0.0,0.0,0.238095238095,0.695238095238,0.0666666666667,105,77.3836206897,0.527277894494,training``
  (``MOS`` on a 0-100 scale, ``c1..c5`` the share of 1-5 star ratings, ``set`` one of
  training / validation / test);
- ``1024x768/<image_name>``: the images.

One instance per image. The MOS is binned into the five ITU-R BT.500 quality levels (bad < 20 <=
poor < 40 <= fair < 60 <= good < 80 <= excellent) and the model picks the level from lettered
options listed in their natural order (the scale is ordinal, so it is not shuffled). The MOS,
its SD and the rating distribution stay in meta.
"""

from __future__ import annotations

import math
from typing import Iterator

from ... import storage
from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._common import SourceFileError, list_names, csv_rows
from ._options import answer_with_letter, format_options

SPEC = TaskSpec(key="iqa", category="classification", lang="en", splits=("train", "validation", "test"), rephrase=False)

SCORE_FILE = "koniq10k_distributions_sets.csv"
IMAGE_DIR = "1024x768"
_SET = {"train": "training", "validation": "validation", "test": "test"}
LEVELS = ("excellent", "good", "fair", "poor", "bad")  # option order, best first


def quality_level(mos: float) -> str:
    """The five-level quality name of a 0-100 MOS (20-point bins)."""
    if mos >= 80:
        return "excellent"
    if mos >= 60:
        return "good"
    if mos >= 40:
        return "fair"
    if mos >= 20:
        return "poor"
    return "bad"


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    if split not in _SET:
        raise ValueError(f"iqa has splits {SPEC.splits}; got {split!r}")
    csv_path = storage.join(root, SCORE_FILE)
    try:
        rows = csv_rows(csv_path, {"image_name", "MOS", "set"})
    except SourceFileError as e:
        yield Reject(SPEC.key, split, csv_path, str(e))
        return
    present = list_names(storage.join(root, IMAGE_DIR))
    for n, row in enumerate(rows, start=1):
        where = f"{csv_path}#row{n}"
        if (row.get("set") or "").strip() != _SET[split]:
            continue
        name = (row.get("image_name") or "").strip()
        try:
            mos = float(row.get("MOS") or "")
            if not math.isfinite(mos) or not 0 <= mos <= 100:
                raise ValueError(f"{mos} is outside 0-100")
        except ValueError as e:
            yield Reject(SPEC.key, split, where, f"MOS {row.get('MOS')!r} is not a 0-100 score: {e}")
            continue
        if not name:
            yield Reject(SPEC.key, split, where, "missing field 'image_name'")
            continue
        if name not in present:
            yield Reject(SPEC.key, split, where, f"missing image file {IMAGE_DIR}/{name}")
            continue
        gold = quality_level(mos)
        options = list(LEVELS)
        yield SourceInstance(
            task=SPEC.key,
            split=split,
            source_id=name.rsplit(".", 1)[0],
            source=where,
            inputs=format_options(options),
            outputs=answer_with_letter(options, gold),
            image_paths=[storage.join(root, IMAGE_DIR, name)],
            meta={
                "image_name": name,
                "original_answer": gold,
                "mos": mos,
                "sd": row.get("SD"),
                "rating_distribution": [row.get(f"c{k}") for k in range(1, 6)],
                "num_ratings": row.get("c_total"),
                "set": row.get("set"),
                "options": options,
            },
        )
