"""Multi30k task 1 (English to German, image-grounded): the release folder ``data/task1``.

Reads ``raw/{train,val,test_2016_flickr}.{en,de}.gz`` (gzipped, as released; the plain files
without ``.gz`` are read when present), aligned line by line with
``image_splits/{train,val,test_2016_flickr}.txt``, one Flickr30k image file name per line, the
images lying in ``flickr30k-images/``. One instance per line: the English caption in ``inputs``, the
German in ``outputs``. Example (line 1 of val)::

    image_splits/val.txt: 1018148011.jpg
    raw/val.en: A group of people stand in the back of a truck filled with cotton.
    raw/val.de: Leute Stehen hinter einem Lastwagen voller Baumwolle.
"""

from __future__ import annotations

import gzip
from typing import Iterator

from ... import storage
from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._common import SourceFileError, list_names, read_bytes

SPEC = TaskSpec(key="multi30k", category="generation", lang="en", splits=("train", "validation", "test"), rephrase=False)

_NAME = {"train": "train", "validation": "val", "test": "test_2016_flickr"}
IMAGE_DIR = "flickr30k-images"


def _text_lines(root: str, name: str, lang: str) -> tuple[str, list[bytes]]:
    plain = storage.join(root, "raw", f"{name}.{lang}")
    try:
        return plain, read_bytes(plain).splitlines()
    except SourceFileError:
        pass
    packed = plain + ".gz"
    raw = read_bytes(packed)
    try:
        return packed, gzip.decompress(raw).splitlines()
    except (OSError, EOFError) as e:
        raise SourceFileError(f"{packed} is not a readable gzip file: {e}") from None


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    if split not in _NAME:
        raise ValueError(f"multi30k has splits {SPEC.splits}; got {split!r}")
    name = _NAME[split]
    list_path = storage.join(root, "image_splits", f"{name}.txt")
    try:
        en_path, en_lines = _text_lines(root, name, "en")
        de_path, de_lines = _text_lines(root, name, "de")
        images = read_bytes(list_path).decode("utf-8").splitlines()
    except SourceFileError as e:
        yield Reject(SPEC.key, split, f"{root}/raw/{name}.{{en,de}} + {list_path}", str(e))
        return
    except UnicodeDecodeError as e:
        yield Reject(SPEC.key, split, list_path, f"image list is not UTF-8: {e}")
        return
    if not len(en_lines) == len(de_lines) == len(images):
        yield Reject(
            SPEC.key, split, f"{en_path} + {de_path} + {list_path}",
            f"files are not aligned: {len(en_lines)} English, {len(de_lines)} German, {len(images)} image lines",
        )
        return
    present = list_names(storage.join(root, IMAGE_DIR))
    for n, (en_raw, de_raw, image) in enumerate(zip(en_lines, de_lines, images), start=1):
        where = f"{en_path}:{n}"
        try:
            english, german = en_raw.decode("utf-8").strip(), de_raw.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            yield Reject(SPEC.key, split, where, f"line {n} of the English or German file is not UTF-8: {e}")
            continue
        image = image.strip()
        if not english or not german:
            yield Reject(SPEC.key, split, where, f"line {n} has an empty English or German sentence")
            continue
        if image not in present:
            yield Reject(SPEC.key, split, where, f"missing image file {IMAGE_DIR}/{image}")
            continue
        yield SourceInstance(
            task=SPEC.key,
            split=split,
            source_id=str(n),
            source=where,
            inputs=english,
            outputs=german,
            image_paths=[storage.join(root, IMAGE_DIR, image)],
            meta={"line": n, "image": image, "english": english, "german": german},
        )
