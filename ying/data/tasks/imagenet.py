"""ImageNet ILSVRC2012 classification, in the Kaggle "ImageNet Object Localization Challenge" layout.

Release files read (one real layout, the Kaggle ``imagenet-object-localization-challenge`` one):

- ``LOC_synset_mapping.txt``: one synset a line, ``n01440764 tench, Tinca tinca``;
- ``ILSVRC/Data/CLS-LOC/train/<wnid>/<wnid>_<n>.JPEG``: training images, labelled by folder;
- ``LOC_val_solution.csv``: header ``ImageId,PredictionString``, then e.g.
  ``ILSVRC2012_val_00008726,n02119789 255 142 454 329 n02119789 44 21 322 295`` (every box of an
  image has the image's class; the first token is the label);
- ``ILSVRC/Data/CLS-LOC/val/<ImageId>.JPEG``: validation images.

The test labels are not public, so the splits are train and validation. A class is named by the
first synonym of its synset; the model picks it among ``MAX_OPTIONS`` lettered options (the gold
plus stable distractors, paper §2.1).
"""

from __future__ import annotations

import csv
import io
from typing import Iterator

from ... import storage
from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._common import SourceFileError, list_names, read_bytes
from ._options import answer_with_letter, format_options, reduced_options

SPEC = TaskSpec(key="imagenet", category="classification", lang="en", splits=("train", "validation"), rephrase=False)

MAPPING_FILE = "LOC_synset_mapping.txt"
VAL_FILE = "LOC_val_solution.csv"
DATA_DIR = ("ILSVRC", "Data", "CLS-LOC")
MAX_OPTIONS = 10


def _text(path: str) -> str:
    try:
        return read_bytes(path).decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SourceFileError(f"{path} is not UTF-8: {e}") from None


def _synsets(path: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for n, line in enumerate(_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        wnid, _, names = line.strip().partition(" ")
        synonyms = [s.strip() for s in names.split(",") if s.strip()]
        if not wnid.startswith("n") or not synonyms:
            raise SourceFileError(f"{path}:{n}: expected '<wnid> <name>, <name>...', got {line!r}")
        found[wnid] = synonyms
    if not found:
        raise SourceFileError(f"{path} lists no synsets")
    return found


def _instance(split: str, source_id: str, where: str, wnid: str, synsets: dict[str, list[str]],
              labels: list[str], image_path: str, extra: dict) -> SourceInstance:
    gold = synsets[wnid][0]
    options = reduced_options(SPEC.key, source_id, gold, labels, MAX_OPTIONS)
    return SourceInstance(
        task=SPEC.key,
        split=split,
        source_id=source_id,
        source=where,
        inputs=format_options(options),
        outputs=answer_with_letter(options, gold),
        image_paths=[image_path],
        meta={"wnid": wnid, "original_answer": gold, "synonyms": synsets[wnid], "options": options, **extra},
    )


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    if split not in SPEC.splits:
        raise ValueError(f"imagenet has splits {SPEC.splits}; got {split!r}")
    map_path = storage.join(root, MAPPING_FILE)
    try:
        synsets = _synsets(map_path)
    except SourceFileError as e:
        yield Reject(SPEC.key, split, map_path, f"unusable synset mapping: {e}")
        return
    labels = [names[0] for names in synsets.values()]
    if split == "train":
        yield from _train(root, synsets, labels)
    else:
        yield from _validation(root, synsets, labels)


def _train(root: str, synsets: dict[str, list[str]], labels: list[str]) -> Iterator[SourceInstance | Reject]:
    train_dir = storage.join(root, *DATA_DIR, "train")
    folders = list_names(train_dir)
    if not folders:
        yield Reject(SPEC.key, "train", train_dir, "missing or empty training image folder")
        return
    for wnid in sorted(folders):
        folder = storage.join(train_dir, wnid)
        if wnid not in synsets:
            yield Reject(SPEC.key, "train", folder, f"folder {wnid!r} is not a synset in {MAPPING_FILE}")
            continue
        for filename in sorted(list_names(folder)):
            if not filename.upper().endswith(".JPEG"):
                continue
            yield _instance("train", filename.rsplit(".", 1)[0], storage.join(folder, filename), wnid, synsets, labels,
                            storage.join(folder, filename), {"file_name": filename})


def _validation(root: str, synsets: dict[str, list[str]], labels: list[str]) -> Iterator[SourceInstance | Reject]:
    csv_path = storage.join(root, VAL_FILE)
    try:
        rows = list(csv.reader(io.StringIO(_text(csv_path), newline="")))
    except (SourceFileError, csv.Error) as e:
        yield Reject(SPEC.key, "validation", csv_path, f"unusable label file: {e}")
        return
    if not rows or rows[0][:2] != ["ImageId", "PredictionString"]:
        yield Reject(SPEC.key, "validation", csv_path, "expected header 'ImageId,PredictionString'")
        return
    val_dir = storage.join(root, *DATA_DIR, "val")
    present = list_names(val_dir)
    for n, row in enumerate(rows[1:], start=2):
        where = f"{csv_path}:{n}"
        if not row:
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].split():
            yield Reject(SPEC.key, "validation", where, f"expected 'ImageId,PredictionString', got {row!r}")
            continue
        image_id, wnid = row[0].strip(), row[1].split()[0]
        if wnid not in synsets:
            yield Reject(SPEC.key, "validation", where, f"unknown synset {wnid!r} (not in {MAPPING_FILE})")
            continue
        filename = f"{image_id}.JPEG"
        if filename not in present:
            yield Reject(SPEC.key, "validation", where, f"missing image file {'/'.join(DATA_DIR)}/val/{filename}")
            continue
        yield _instance("validation", image_id, where, wnid, synsets, labels, storage.join(val_dir, filename),
                        {"image_id": image_id})
