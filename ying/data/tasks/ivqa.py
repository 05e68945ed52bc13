"""iVQA (Yang et al., 2021, "Just Ask"): ``train.csv``, ``val.csv`` and ``test.csv`` with the
columns ``video_id, start, end, question, answer1, ..., answer5`` (five human answers per
question), and the clips ``video/<video_id>_<start>_<end>.mp4`` (the YouTube id and the clip's
start and end seconds, as written in the CSV).

Raw row: ``Xf5XnWsSCIk,52,69,what is the man cutting,onion,onion,onions,onion,red onion``

The output is the answer most annotators gave (ties go to the earliest column); all five
answers stay in meta. Short answers are rephrased later.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from typing import Iterator

from ... import storage
from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._common import SourceFileError, list_names, read_bytes

SPEC = TaskSpec(key="ivqa", category="video", lang="en", splits=("train", "validation", "test"), rephrase=True)

_CSV = {"train": "train.csv", "validation": "val.csv", "test": "test.csv"}
VIDEO_DIR = "video"
ANSWER_COLUMNS = tuple(f"answer{k}" for k in range(1, 6))
REQUIRED = ("video_id", "start", "end", "question") + ANSWER_COLUMNS


def majority_answer(answers: list[str]) -> str:
    return Counter(answers).most_common(1)[0][0]  # Counter keeps first-seen order among ties


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    if split not in _CSV:
        raise ValueError(f"ivqa has splits {SPEC.splits}; got {split!r}")
    path = storage.join(root, _CSV[split])
    try:
        text = read_bytes(path).decode("utf-8")
    except SourceFileError as e:
        yield Reject(SPEC.key, split, path, str(e))
        return
    except UnicodeDecodeError as e:
        yield Reject(SPEC.key, split, path, f"{path} is not UTF-8: {e}")
        return
    reader = csv.DictReader(io.StringIO(text))
    missing_cols = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
    if missing_cols:
        yield Reject(SPEC.key, split, path, f"missing columns {missing_cols}")
        return
    present = list_names(storage.join(root, VIDEO_DIR))
    for i, row in enumerate(reader):
        where = f"{path}#row{i + 1}"
        empty = [c for c in ("video_id", "start", "end", "question") if not (row.get(c) or "").strip()]
        if empty:
            yield Reject(SPEC.key, split, where, f"missing field {empty[0]!r}")
            continue
        answers = [(row.get(c) or "").strip() for c in ANSWER_COLUMNS]
        answers = [a for a in answers if a]
        if not answers:
            yield Reject(SPEC.key, split, where, "no answers in answer1..answer5")
            continue
        video_id, start, end = row["video_id"].strip(), row["start"].strip(), row["end"].strip()
        name = f"{video_id}_{start}_{end}.mp4"
        if name not in present:
            yield Reject(SPEC.key, split, where, f"missing video file {VIDEO_DIR}/{name}")
            continue
        answer = majority_answer(answers)
        yield SourceInstance(
            task=SPEC.key,
            split=split,
            source_id=f"{i}-{video_id}_{start}_{end}",
            source=where,
            inputs=row["question"].strip(),
            outputs=answer,
            video_path=storage.join(root, VIDEO_DIR, name),
            meta={"row": i, "video_id": video_id, "start": start, "end": end,
                  "answers": answers, "original_answer": answer},
        )
