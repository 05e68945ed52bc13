"""Shapes VQA (Andreas et al. 2016), the ``shapes_dataset`` release of the NMN authors.

Files per split prefix (``train.large`` for train, ``val``, ``test``), one example per line/row:

* ``<prefix>.query_str.txt``: the natural-language question, e.g. ``is a red shape blue``
* ``<prefix>.query``: the question's logical form (kept in meta when present)
* ``<prefix>.output``: the answer, ``true`` or ``false``
* ``<prefix>.input.npy``: an array of shape (N, 30, 30, 3) (or (N, 2700)), row i is image i

Raw example (line 1 of each text file + row 0 of the array): ``is a red shape blue`` /
``(is (and red blue))`` / ``false`` / a 30x30 RGB array.

Images live inside the array, but ``SourceInstance`` carries image *paths*: each array image is
materialised once as PNG into a cache folder ``<root>/_ying_png/<split>/<i>.png`` (created when
missing, reused afterwards) and ``image_paths`` point there. Nothing else is written.
"""

from __future__ import annotations

import io
from typing import Iterator

import numpy as np
from PIL import Image

from ... import storage
from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._common import SourceFileError, list_names, read_bytes

SPEC = TaskSpec(key="shapes", category="vqa", lang="en", splits=("train", "validation", "test"), rephrase=True)

PREFIX = {"train": "train.large", "validation": "val", "test": "test"}
CACHE_DIR = "_ying_png"
IMAGE_SIZE = (30, 30, 3)


def _lines(path: str) -> list[bytes]:
    return read_bytes(path).splitlines()


def _to_png(row: np.ndarray) -> bytes:
    arr = np.asarray(row)
    if arr.shape != IMAGE_SIZE:
        arr = arr.reshape(IMAGE_SIZE)
    if np.issubdtype(arr.dtype, np.floating) and arr.size and float(np.nanmax(arr)) <= 1.0:
        arr = arr * 255.0  # float images stored in [0, 1]
    arr = np.clip(np.nan_to_num(arr), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    if split not in PREFIX:
        raise ValueError(f"shapes has splits {SPEC.splits}; got {split!r}")
    prefix = PREFIX[split]
    q_path = storage.join(root, f"{prefix}.query_str.txt")
    lf_path = storage.join(root, f"{prefix}.query")
    a_path = storage.join(root, f"{prefix}.output")
    npy_path = storage.join(root, f"{prefix}.input.npy")
    try:
        questions = _lines(q_path)
        answers = _lines(a_path)
        raw_npy = read_bytes(npy_path)
    except SourceFileError as e:
        yield Reject(SPEC.key, split, f"{q_path} + {a_path} + {npy_path}", str(e))
        return
    try:
        forms = _lines(lf_path)
    except SourceFileError:
        forms = []  # the logical forms are optional extras
    try:
        images = np.load(io.BytesIO(raw_npy), allow_pickle=False)
        if images.ndim == 2 and images.shape[1] == int(np.prod(IMAGE_SIZE)):
            images = images.reshape((-1, *IMAGE_SIZE))
        if images.ndim != 4 or tuple(images.shape[1:]) != IMAGE_SIZE:
            raise ValueError(f"array shape {images.shape}, expected (N, 30, 30, 3)")
    except (ValueError, OSError) as e:
        yield Reject(SPEC.key, split, npy_path, f"unusable image array: {e}")
        return
    cache = storage.join(root, CACHE_DIR, split)
    cached = list_names(cache)
    for i, raw_q in enumerate(questions):
        where = f"{q_path}:{i + 1}"
        try:
            question = raw_q.decode("utf-8").strip()
            answer = answers[i].decode("utf-8").strip() if i < len(answers) else ""
            form = forms[i].decode("utf-8").strip() if i < len(forms) else None
        except UnicodeDecodeError as e:
            yield Reject(SPEC.key, split, where, f"line is not UTF-8: {e}")
            continue
        if not question or not answer:
            yield Reject(SPEC.key, split, where, f"empty question or no answer on line {i + 1} of {a_path}")
            continue
        if i >= len(images):
            yield Reject(SPEC.key, split, where, f"no image at index {i} in {npy_path} ({len(images)} rows)")
            continue
        name = f"{i}.png"
        png_path = storage.join(cache, name)
        if name not in cached:
            try:
                storage.write_bytes_atomic(png_path, _to_png(images[i]))
            except (OSError, ValueError) as e:
                yield Reject(SPEC.key, split, where, f"can't write cached image {png_path}: {e}")
                continue
        yield SourceInstance(
            task=SPEC.key,
            split=split,
            source_id=f"{prefix}-{i}",
            source=where,
            inputs=question,
            outputs=answer,
            image_paths=[png_path],
            meta={"original_answer": answer, "index": i, "file_prefix": prefix, "logical_form": form,
                  "image_source": f"{npy_path}#{i}"},
        )
