"""e-SNLI-VE (Kayser et al., 2021), from the e-ViL release, plus the Flickr30k images.

Release files (github.com/maximek3/e-ViL, ``data/``): ``esnlive_{train,dev,test}.csv`` with the
header ``,pairID,Flickr30kID,hypothesis,gold_label,explanation`` (the first column is a pandas
row index), e.g.::

    8,1131804997.jpg#1r2e,1131804997.jpg,Two people are outdoors.,entailment,men are people.

Images are ``flickr30k_images/<Flickr30kID>``. One instance per row: the hypothesis and the three
lettered options (entailment / neutral / contradiction, order by a stable hash of the pairID)
go in the inputs; the human explanation stays in meta.
"""

from __future__ import annotations

import csv
import io
from typing import Iterator

from ... import storage
from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._common import SourceFileError, list_names
from ._options import answer_with_letter, format_options, reduced_options

SPEC = TaskSpec(key="snli-ve", category="classification", lang="en", splits=("train", "validation", "test"), rephrase=False)

_FILE = {"train": "esnlive_train.csv", "validation": "esnlive_dev.csv", "test": "esnlive_test.csv"}
IMAGE_DIR = "flickr30k_images"
LABELS = ("entailment", "neutral", "contradiction")
_COLUMNS = ("pairID", "Flickr30kID", "hypothesis", "gold_label", "explanation")


def _rows(path: str) -> Iterator[list[str]]:
    """The CSV's rows, decoded and parsed a line at a time (the train file has ~400k rows);
    SourceFileError where the file is missing, stops being UTF-8 or stops being CSV."""
    fs, p = storage.filesystem(path)
    try:
        f = fs.open(p, "rb")
    except FileNotFoundError:
        raise SourceFileError(f"missing file {path}") from None
    except OSError as e:
        raise SourceFileError(f"can't read {path}: {e}") from None
    with f, io.TextIOWrapper(f, encoding="utf-8-sig", newline="") as text:
        try:
            yield from csv.reader(text)
        except UnicodeDecodeError as e:
            raise SourceFileError(f"{path} is not UTF-8: {e}") from None
        except csv.Error as e:
            raise SourceFileError(f"{path} is not valid CSV: {e}") from None


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    if split not in _FILE:
        raise ValueError(f"snli-ve has splits {SPEC.splits}; got {split!r}")
    csv_path = storage.join(root, _FILE[split])
    rows = _rows(csv_path)
    try:
        header = next(rows, [])
        col = {name: header.index(name) for name in _COLUMNS}
    except SourceFileError as e:
        yield Reject(SPEC.key, split, csv_path, str(e))
        return
    except ValueError as e:
        yield Reject(SPEC.key, split, csv_path, f"header lacks a column: {e}")
        return
    present = list_names(storage.join(root, IMAGE_DIR))
    numbered = enumerate(rows, start=1)
    while True:
        try:
            n, row = next(numbered)
        except StopIteration:
            return
        except SourceFileError as e:  # the rest of the file can't be read: one reject for it
            yield Reject(SPEC.key, split, csv_path, str(e))
            return
        where = f"{csv_path}#row{n}"
        if not row:
            continue
        if len(row) != len(header):
            yield Reject(SPEC.key, split, where, f"expected {len(header)} columns, found {len(row)}")
            continue
        pair_id, image, hypothesis, gold, explanation = (row[col[c]].strip() for c in _COLUMNS)
        if not pair_id or not image or not hypothesis:
            yield Reject(SPEC.key, split, where, "missing pairID, Flickr30kID or hypothesis")
            continue
        if gold not in LABELS:
            yield Reject(SPEC.key, split, where, f"gold_label {gold!r} is not one of {list(LABELS)}")
            continue
        if image not in present:
            yield Reject(SPEC.key, split, where, f"missing image file {IMAGE_DIR}/{image}")
            continue
        options = reduced_options(SPEC.key, pair_id, gold, list(LABELS), len(LABELS))
        yield SourceInstance(
            task=SPEC.key,
            split=split,
            source_id=pair_id,
            source=where,
            inputs=f"Hypothesis: {hypothesis}\n{format_options(options)}",
            outputs=answer_with_letter(options, gold),
            image_paths=[storage.join(root, IMAGE_DIR, image)],
            meta={
                "pairID": pair_id,
                "flickr30k_id": image,
                "hypothesis": hypothesis,
                "original_answer": gold,
                "explanation": explanation,
                "options": options,
                "row_index": row[0] if header and header[0] == "" else None,
            },
        )
