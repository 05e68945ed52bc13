"""VCR v1.0 (Q -> A): ``{train,val}.jsonl`` and ``vcr1images/<movie>/<image>.jpg`` with a
metadata ``.json`` beside each image (``boxes`` as ``[x1, y1, x2, y2, score]`` per detected object,
``width``, ``height``). ``test.jsonl`` has its labels removed, so the splits are train and validation.

Naming convention: object tags in the tokenized text (integer lists indexing ``objects``) are
rendered as the class name (spaces removed) plus its 1-based occurrence among same-class objects
in ``objects``: with ``objects = ["person", "person", "horse"]``, index 0 is ``person1``, 1 is
``person2`` and 2 is ``horse1``; a tag ``[0, 1]`` reads ``person1 and person2``. The same names
label the regions: every object referred to by the question, the answer choices or the rationale
choices gets its box (x, y, w, h) in ``meta["regions"]`` as ``{"name", "object_index", "box"}``, in
order of first mention; the build stage draws each box in red with its name written beside it, so
the region a name denotes is unambiguous in the image and in the text.

``inputs`` is the question and the four lettered answer choices; ``outputs`` is ``(X) <answer>``;
the gold rationale stays in meta (context for rephrasing). Example line (abridged)::

    {"img_fn": "lsmdc_3015_CHARLIE_ST_CLOUD/3015_CHARLIE_ST_CLOUD_00.23.57.935-00.24.00.783@0.jpg",
     "metadata_fn": "lsmdc_3015_CHARLIE_ST_CLOUD/3015_..._00.24.00.783@0.json",
     "objects": ["person", "person", "person", "car"], "question": ["Does", [2], "feel", "comfortable", "?"],
     "answer_choices": [["No", [2], "does", "not", "."], ...], "answer_label": 0,
     "rationale_choices": [[...], ...], "rationale_label": 2, "annot_id": "val-0", ...}
"""

from __future__ import annotations

import re
from typing import Any, Iterator

from ... import storage
from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._common import SourceFileError, FolderIndex, load_json, json_lines
from ._options import LETTERS, format_options

SPEC = TaskSpec(key="vcr", category="reasoning", lang="en", splits=("train", "validation"), rephrase=False)

_FILE = {"train": "train.jsonl", "validation": "val.jsonl"}
IMAGE_DIR = "vcr1images"


class _BadRecord(ValueError):
    pass


def object_names(objects: list[str]) -> list[str]:
    """``person1``, ``person2``, ``horse1`` ...: class name plus its occurrence count."""
    seen: dict[str, int] = {}
    names = []
    for label in objects:
        base = "".join(str(label).split())
        seen[base] = seen.get(base, 0) + 1
        names.append(f"{base}{seen[base]}")
    return names


def _join_names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def render(tokens: Any, names: list[str], mentioned: list[int]) -> str:
    """Tokens to text, object tags to names; indices referred to are appended to ``mentioned``."""
    if not isinstance(tokens, list) or not tokens:
        raise _BadRecord("token list is missing or empty")
    words = []
    for tok in tokens:
        if isinstance(tok, str):
            words.append(tok)
        elif isinstance(tok, list) and tok and all(isinstance(i, int) and not isinstance(i, bool) for i in tok):
            if any(i < 0 or i >= len(names) for i in tok):
                raise _BadRecord(f"object tag {tok} is outside the {len(names)} objects")
            for i in tok:
                if i not in mentioned:
                    mentioned.append(i)
            words.append(_join_names([names[i] for i in tok]))
        else:
            raise _BadRecord(f"token {tok!r} is neither a word nor a list of object indices")
    text = " ".join(words)
    text = re.sub(r" (?=[?.!,;:](?:\s|$))", "", text)
    text = re.sub(r" (?=n't\b|'(?:s|re|ve|ll|d|m)\b)", "", text)
    return text.strip()


def _region(meta: dict, index: int, name: str) -> dict:
    try:
        x1, y1, x2, y2 = (float(v) for v in meta["boxes"][index][:4])
        width, height = float(meta["width"]), float(meta["height"])
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise _BadRecord(f"metadata has no usable box for object {index} ({name}): {e!r}") from None
    box = [x1, y1, x2 - x1, y2 - y1]
    if x1 < 0 or y1 < 0 or x2 <= x1 or y2 <= y1 or x2 > width or y2 > height:
        raise _BadRecord(f"box of {name} {box} lies outside the {width:g}x{height:g} image")
    return {"name": name, "object_index": index, "box": box}


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    if split not in _FILE:
        raise ValueError(f"vcr has splits {SPEC.splits}; got {split!r}")
    path = storage.join(root, _FILE[split])
    present = FolderIndex()  # one listing per image folder
    for item in json_lines(SPEC.key, split, path):
        if isinstance(item, Reject):
            yield item
            continue
        where, rec = item
        try:
            img_fn, meta_fn, objects = rec["img_fn"], rec["metadata_fn"], rec["objects"]
            question, answers, label = rec["question"], rec["answer_choices"], rec["answer_label"]
            rationales, r_label = rec["rationale_choices"], rec["rationale_label"]
        except (KeyError, TypeError) as e:
            yield Reject(SPEC.key, split, where, f"missing field {e}")
            continue
        try:
            if not isinstance(objects, list) or not isinstance(img_fn, str) or not isinstance(meta_fn, str):
                raise _BadRecord("objects, img_fn or metadata_fn has the wrong type")
            if not isinstance(answers, list) or not answers or not isinstance(label, int) or not 0 <= label < len(answers):
                raise _BadRecord(f"answer_label {label!r} does not index the answer choices")
            if not isinstance(rationales, list) or not isinstance(r_label, int) or not 0 <= r_label < len(rationales):
                raise _BadRecord(f"rationale_label {r_label!r} does not index the rationale choices")
            names = object_names(objects)
            mentioned: list[int] = []
            q_text = render(question, names, mentioned)
            choices = [render(a, names, mentioned) for a in answers]
            rationale_texts = [render(r, names, mentioned) for r in rationales]
        except _BadRecord as e:
            yield Reject(SPEC.key, split, where, str(e))
            continue
        folder, _, filename = storage.join(root, IMAGE_DIR, img_fn).rpartition("/")
        if not present.has(folder, filename):
            yield Reject(SPEC.key, split, where, f"missing image file {IMAGE_DIR}/{img_fn}")
            continue
        meta_path = storage.join(root, IMAGE_DIR, meta_fn)
        try:
            image_meta = load_json(meta_path)
            regions = [_region(image_meta, i, names[i]) for i in mentioned]
        except SourceFileError as e:
            yield Reject(SPEC.key, split, where, f"image metadata unusable: {e}")
            continue
        except _BadRecord as e:
            yield Reject(SPEC.key, split, where, str(e))
            continue
        source_id = str(rec.get("annot_id") or f"line{where.rsplit(':', 1)[1]}")
        yield SourceInstance(
            task=SPEC.key,
            split=split,
            source_id=source_id,
            source=where,
            inputs=f"{q_text}\n{format_options(choices)}",
            outputs=f"({LETTERS[label]}) {choices[label]}",
            image_paths=[storage.join(root, IMAGE_DIR, img_fn)],
            boxes=[[r["box"] for r in regions]],  # every named region, drawn on the one image
            box_labels=[[r["name"] for r in regions]],
            meta={
                "annot_id": rec.get("annot_id"),
                "img_id": rec.get("img_id"),
                "img_fn": img_fn,
                "metadata_fn": meta_fn,
                "question_number": rec.get("question_number"),
                "original_answer": choices[label],
                "answer_label": label,
                "answer_choices": choices,
                "rationale": rationale_texts[r_label],
                "rationale_label": r_label,
                "object_names": names,
                "regions": regions,
            },
        )
