"""Mocheg (Yao et al., 2022) multimodal fact checking, release layout of github.com/VT-NLP/Mocheg.

Release files read, per split folder ``train/``, ``val/``, ``test/``:

- ``<split>/Corpus2.csv``: one row per (claim, text evidence), columns including ``claim_id``,
  ``Snopes URL``, ``Claim``, ``Evidence``, ``cleaned_truthfulness`` (``supported`` / ``refuted`` /
  ``NEI``), ``Origin``, ``ruling_outline``; a claim spans several rows, e.g.
  ``9484,https://www.snopes.com/...,...,"Photo shows ...","<p>...</p>",refuted,...``;
- ``<split>/images/``: evidence images; a claim's proof images are named
  ``<claim_id>-proof-<n>[...].jpg`` (the official reader ``util/read_example.py`` takes the
  ``<claim_id>-proof`` prefix as the claim's image evidence).

One instance per claim that has at least one proof image: all its proof images (name order), the
claim text and three lettered options; the model says whether the evidence supports the claim,
refutes it, or is not enough. The release label is kept in meta.
"""

from __future__ import annotations

from typing import Iterator

from ... import storage
from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._common import SourceFileError, list_names, csv_rows
from ._options import answer_with_letter, format_options, reduced_options

SPEC = TaskSpec(key="mocheg", category="classification", lang="en", splits=("train", "validation", "test"), rephrase=False)

_DIR = {"train": "train", "validation": "val", "test": "test"}
CORPUS_FILE = "Corpus2.csv"
IMAGE_DIR = "images"
# release label -> the option text shown to the model
LABELS = {"supported": "supported", "refuted": "refuted", "nei": "not enough information"}


def _proof_images(names: set[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name in sorted(names):
        parts = name.split("-")
        if len(parts) >= 3 and parts[1] == "proof" and parts[0].isdigit():
            found.setdefault(str(int(parts[0])), []).append(name)
    return found


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    if split not in _DIR:
        raise ValueError(f"mocheg has splits {SPEC.splits}; got {split!r}")
    folder = storage.join(root, _DIR[split])
    csv_path = storage.join(folder, CORPUS_FILE)
    try:
        rows = csv_rows(csv_path, {"claim_id", "Claim", "cleaned_truthfulness"})
    except SourceFileError as e:
        yield Reject(SPEC.key, split, csv_path, str(e))
        return
    claims: dict[str, tuple[int, dict[str, str]]] = {}  # claim id -> (first data row, row)
    for n, row in enumerate(rows, start=1):
        cid = (row.get("claim_id") or "").strip()
        if not cid:
            yield Reject(SPEC.key, split, f"{csv_path}#row{n}", "missing field 'claim_id'")
            continue
        claims.setdefault(cid, (n, row))
    proofs = _proof_images(list_names(storage.join(folder, IMAGE_DIR)))
    for cid, (n, row) in claims.items():
        where = f"{csv_path}#row{n}"
        claim = (row.get("Claim") or "").strip()
        label = (row.get("cleaned_truthfulness") or "").strip()
        if not claim:
            yield Reject(SPEC.key, split, where, f"claim {cid} has an empty 'Claim'")
            continue
        if label.lower() not in LABELS:
            yield Reject(SPEC.key, split, where, f"claim {cid}: cleaned_truthfulness {label!r} is not supported/refuted/NEI")
            continue
        key = str(int(cid)) if cid.isdigit() else cid
        images = proofs.get(key, [])
        if not images:
            yield Reject(SPEC.key, split, where, f"claim {cid} has no evidence image {_DIR[split]}/{IMAGE_DIR}/{cid}-proof-*")
            continue
        gold = LABELS[label.lower()]
        options = reduced_options(SPEC.key, cid, gold, list(LABELS.values()), len(LABELS))
        yield SourceInstance(
            task=SPEC.key,
            split=split,
            source_id=cid,
            source=where,
            inputs=f"Claim: {claim}\n{format_options(options)}",
            outputs=answer_with_letter(options, gold),
            image_paths=[storage.join(folder, IMAGE_DIR, name) for name in images],
            meta={
                "claim_id": cid,
                "original_answer": label,
                "options": options,
                "image_names": images,
                "snopes_url": row.get("Snopes URL"),
                "ruling_outline": row.get("ruling_outline"),
            },
        )
