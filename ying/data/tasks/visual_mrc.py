"""VisualMRC: the release's split files ``train.json``, ``val.json`` and ``test.json`` (written by
its ``create_dataset.sh``; the split is by URL domain) and the document screenshots they name.

Each file is a JSON list of documents ``{id, url, image_filename, screenshot_filename,
bounding_boxes: [{id, structure, shape: {x, y, width, height}, ocr_info: [...]}], qa_data:
[{question: {text}, answer: {text, relevant: [...]}}]}``; ``image_filename`` is taken relative to
the dataset root. One instance per QA pair: the question in ``inputs``, the abstractive answer in
``outputs``. Example document (abridged)::

    {"id": "1000", "url": "https://en.wikipedia.org/wiki/...", "image_filename": "images/1000.png",
     "bounding_boxes": [{"id": "0", "structure": "Title", "shape": {...}, "ocr_info": [...]}],
     "qa_data": [{"question": {"text": "What is this page about?"},
                  "answer": {"text": "It is about ...", "relevant": ["0"]}}]}
"""

from __future__ import annotations

from typing import Iterator

from ... import storage
from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._common import SourceFileError, FolderIndex, load_json

SPEC = TaskSpec(key="visual-mrc", category="reasoning", lang="en", splits=("train", "validation", "test"), rephrase=False)

_FILE = {"train": "train.json", "validation": "val.json", "test": "test.json"}


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    if split not in _FILE:
        raise ValueError(f"visual-mrc has splits {SPEC.splits}; got {split!r}")
    path = storage.join(root, _FILE[split])
    try:
        docs = load_json(path)
        if not isinstance(docs, list):
            raise SourceFileError(f"{path}: expected a JSON list of documents")
    except SourceFileError as e:
        yield Reject(SPEC.key, split, path, str(e))
        return
    present = FolderIndex()  # one listing per image folder
    for d, doc in enumerate(docs):
        where_doc = f"{path}#[{d}]"
        try:
            doc_id, image_filename, qa_data = doc["id"], doc["image_filename"], doc["qa_data"]
        except (KeyError, TypeError) as e:
            yield Reject(SPEC.key, split, where_doc, f"missing field {e}")
            continue
        if not isinstance(image_filename, str) or not image_filename or not isinstance(qa_data, list):
            yield Reject(SPEC.key, split, where_doc, "image_filename is not text or qa_data is not a list")
            continue
        image_path = storage.join(root, image_filename)
        folder, _, name = image_path.rpartition("/")
        if not present.has(folder, name):
            yield Reject(SPEC.key, split, where_doc, f"missing image file {image_filename}")
            continue
        for k, qa in enumerate(qa_data):
            where = f"{where_doc}.qa_data[{k}]"
            try:
                question, answer = qa["question"]["text"], qa["answer"]["text"]
            except (KeyError, TypeError) as e:
                yield Reject(SPEC.key, split, where, f"missing field {e}")
                continue
            if not isinstance(question, str) or not question.strip() or not isinstance(answer, str) or not answer.strip():
                yield Reject(SPEC.key, split, where, "question or answer is not text")
                continue
            yield SourceInstance(
                task=SPEC.key,
                split=split,
                source_id=f"{doc_id}-{k}",
                source=where,
                inputs=question.strip(),
                outputs=answer.strip(),
                image_paths=[image_path],
                meta={
                    "document_id": doc_id,
                    "qa_index": k,
                    "url": doc.get("url"),
                    "image_filename": image_filename,
                    "original_answer": answer.strip(),
                    "relevant_boxes": qa["answer"].get("relevant"),
                },
            )
