"""ViQuAE: ``{train,validation,test}.jsonl`` (KILT-style, one JSON object a line) + ``images/``.

Raw line: ``{"id": "tc_1", "input": "this singer's re-issued song became the UK Christmas number one
after helping to advertise what brand?", "output": {"original_answer": "Levi's", "answer":
["Levi's", "Levis", ...], "provenance": [...]}, "image": "512px-Jackie_Wilson.png",
"url": "http://upload.wikimedia.org/...", "kilt_id": "...", "wikidata_id": "Q...",
"original_question": "...", "meta": {...}}``.
Images are ``images/<image>`` (the ``viquae_images`` archive). The output is
``output.original_answer``; the aliases stay in meta. ViQuAE is held out for evaluation in the paper;
that is a config choice, so every split is read here.
"""

from __future__ import annotations

from typing import Iterator

from ... import storage
from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._common import list_names, json_lines

SPEC = TaskSpec(key="viquae", category="kvqa", lang="en", splits=("train", "validation", "test"), rephrase=True)

IMAGE_DIR = "images"


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    if split not in SPEC.splits:
        raise ValueError(f"viquae has splits {SPEC.splits}; got {split!r}")
    path = storage.join(root, f"{split}.jsonl")
    present = None
    for item in json_lines(SPEC.key, split, path):
        if isinstance(item, Reject):
            yield item
            continue
        where, rec = item
        if present is None:  # list the image folder once, and only if the file had a record
            present = list_names(storage.join(root, IMAGE_DIR))
        try:
            qid, question, image = rec["id"], rec["input"], rec["image"]
            answer = rec["output"]["original_answer"]
        except (KeyError, TypeError) as e:
            yield Reject(SPEC.key, split, where, f"missing field {e}")
            continue
        if not isinstance(question, str) or not isinstance(answer, str) or not question.strip() or not answer.strip():
            yield Reject(SPEC.key, split, where, "question or answer is empty or not text")
            continue
        if not isinstance(image, str) or image not in present:
            yield Reject(SPEC.key, split, where, f"missing image file {IMAGE_DIR}/{image}")
            continue
        yield SourceInstance(
            task=SPEC.key,
            split=split,
            source_id=str(qid),
            source=where,
            inputs=question.strip(),
            outputs=answer.strip(),
            image_paths=[storage.join(root, IMAGE_DIR, image)],
            meta={
                "original_answer": answer,
                "answers": rec["output"].get("answer"),
                "id": qid,
                "kilt_id": rec.get("kilt_id"),
                "wikidata_id": rec.get("wikidata_id"),
                "image": image,
                "url": rec.get("url"),
                "original_question": rec.get("original_question"),
            },
        )
