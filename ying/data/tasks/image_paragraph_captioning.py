"""Stanford Image Paragraph Captioning (Krause et al., 2017).

Release files (cs.stanford.edu/people/ranjaykrishna/im2p): ``paragraphs_v1.json``, a list of
``{"url", "image_id", "paragraph"}``, e.g.::

    {"url": "https://cs.stanford.edu/people/rak248/VG_100K_2/2388350.jpg", "image_id": 2388350,
     "paragraph": "On a white plastic cutting board is a bunch of chopped vegetables. ..."}

and ``train_split.json`` / ``val_split.json`` / ``test_split.json``, each a JSON list of image
ids. Images are the Visual Genome files, kept in the folder the url names:
``<root>/VG_100K/<id>.jpg`` or ``<root>/VG_100K_2/<id>.jpg``. One instance per paragraph.
"""

from __future__ import annotations

from typing import Iterator

from ... import storage
from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._common import SourceFileError, FolderIndex, load_json

SPEC = TaskSpec(
    key="image-paragraph-captioning", category="captioning", lang="en", splits=("train", "validation", "test"), rephrase=False
)

_SPLIT_FILE = {"train": "train_split.json", "validation": "val_split.json", "test": "test_split.json"}
PARAGRAPH_FILE = "paragraphs_v1.json"


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    if split not in _SPLIT_FILE:
        raise ValueError(f"image-paragraph-captioning has splits {SPEC.splits}; got {split!r}")
    par_path = storage.join(root, PARAGRAPH_FILE)
    split_path = storage.join(root, _SPLIT_FILE[split])
    try:
        paragraphs = load_json(par_path)
        ids = load_json(split_path)
        if not isinstance(paragraphs, list) or not isinstance(ids, list):
            raise TypeError("expected JSON lists")
        wanted = {str(x) for x in ids}
    except (SourceFileError, TypeError) as e:
        yield Reject(SPEC.key, split, f"{par_path} + {split_path}", f"unusable annotation files: {e}")
        return
    present = FolderIndex()  # one listing per image folder
    for i, item in enumerate(paragraphs):
        where = f"{par_path}#[{i}]"
        image_id = item.get("image_id") if isinstance(item, dict) else None
        if image_id is not None and str(image_id) not in wanted:
            continue
        try:
            url, paragraph = item["url"], item["paragraph"]
            if image_id is None:
                raise KeyError("image_id")
        except (KeyError, TypeError) as e:
            if image_id is None or str(image_id) in wanted:
                yield Reject(SPEC.key, split, where, f"missing field {e}")
            continue
        if not isinstance(paragraph, str) or not paragraph.strip():
            yield Reject(SPEC.key, split, where, "paragraph is empty or not text")
            continue
        parts = str(url).rstrip("/").split("/")
        if len(parts) < 2 or not parts[-1]:
            yield Reject(SPEC.key, split, where, f"can't tell the image folder from url {url!r}")
            continue
        folder, filename = parts[-2], parts[-1]
        if not present.has(storage.join(root, folder), filename):
            yield Reject(SPEC.key, split, where, f"missing image file {folder}/{filename}")
            continue
        yield SourceInstance(
            task=SPEC.key,
            split=split,
            source_id=str(image_id),
            source=where,
            inputs="",
            outputs=paragraph.strip(),
            image_paths=[storage.join(root, folder, filename)],
            meta={"image_id": image_id, "url": url},
        )
