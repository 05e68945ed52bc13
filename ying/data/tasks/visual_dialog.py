"""VisDial v1.0: ``visdial_1.0_{train,val,test}.json`` and the images.

Each file is ``{"version", "split", "data": {"questions": [...], "answers": [...], "dialogs":
[{"image_id", "caption", "dialog": [{"question": q_idx, "answer": a_idx, "answer_options": [...],
"gt_index": n}, ...]}]}}``; questions and answers are indices into the shared lists. Images: train
uses COCO 2014 (``train2014/COCO_train2014_%012d.jpg`` or ``val2014/COCO_val2014_%012d.jpg``), val
``VisualDialog_val2018/VisualDialog_val2018_%012d.jpg``, test
``VisualDialog_test2018/VisualDialog_test2018_%012d.jpg``.

One instance per answered round: ``inputs`` holds the caption, the earlier rounds and the current
question; ``outputs`` is the answer. The last test round has no answer (it is the challenge's hidden
target) and is skipped, not rejected. Example dialog::

    {"image_id": 185565, "caption": "a man riding a skateboard down a ramp",
     "dialog": [{"question": 9367, "answer": 4754, "answer_options": [...100 indices...], "gt_index": 0}, ...]}
"""

from __future__ import annotations

from typing import Iterator

from ... import storage
from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._common import FolderIndex, dialog_inputs, json_items

SPEC = TaskSpec(key="visual-dialog", category="generation", lang="en", splits=("train", "validation", "test"), rephrase=False)

_SUBSET = {"train": "train", "validation": "val", "test": "test"}
_IMAGE_DIRS = {
    "train": ("train2014/COCO_train2014_%012d.jpg", "val2014/COCO_val2014_%012d.jpg"),
    "validation": ("VisualDialog_val2018/VisualDialog_val2018_%012d.jpg",),
    "test": ("VisualDialog_test2018/VisualDialog_test2018_%012d.jpg",),
}


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    if split not in _SUBSET:
        raise ValueError(f"visual-dialog has splits {SPEC.splits}; got {split!r}")
    path = storage.join(root, f"visdial_1.0_{_SUBSET[split]}.json")
    # Streamed: the shared question and answer lists (short strings, needed whole: rounds index into
    # them) in two passes, then the dialogs one at a time; the parsed file is never held.
    shared: dict[str, list] = {"questions": [], "answers": []}
    for name, texts in shared.items():
        for entry in json_items(SPEC.key, split, path, f"data.{name}"):
            if isinstance(entry, Reject):
                yield Reject(SPEC.key, split, path, f"unusable dialog file: {entry.reason}")
                return
            texts.append(entry[1])
    questions, answers = shared["questions"], shared["answers"]
    present = FolderIndex()  # one listing per image folder

    def find_image(image_id: int) -> str | None:
        for pattern in _IMAGE_DIRS[split]:
            rel = pattern % image_id
            folder, name = rel.split("/")
            if present.has(storage.join(root, folder), name):
                return rel
        return None

    for d, entry in enumerate(json_items(SPEC.key, split, path, "data.dialogs")):
        if isinstance(entry, Reject):
            yield Reject(SPEC.key, split, path, f"unusable dialog file: {entry.reason}")
            continue
        dialog = entry[1]
        where_dialog = f"{path}#dialogs[{d}]"
        try:
            image_id, caption, rounds = int(dialog["image_id"]), dialog["caption"], dialog["dialog"]
        except (KeyError, TypeError, ValueError) as e:
            yield Reject(SPEC.key, split, where_dialog, f"missing or malformed field {e}")
            continue
        if not isinstance(caption, str) or not isinstance(rounds, list):
            yield Reject(SPEC.key, split, where_dialog, "caption is not text or dialog is not a list")
            continue
        rel = find_image(image_id)
        if rel is None:
            wanted = " or ".join(p % image_id for p in _IMAGE_DIRS[split])
            yield Reject(SPEC.key, split, where_dialog, f"missing image file {wanted}")
            continue
        history: list[tuple[str, str]] = []
        for r, turn in enumerate(rounds):
            where = f"{where_dialog}.dialog[{r}]"
            try:
                q_idx = turn["question"]
                question = questions[q_idx]
                if "answer" not in turn and split == "test" and r == len(rounds) - 1:
                    break  # the hidden test round
                a_idx = turn["answer"]
                answer = answers[a_idx]
            except (KeyError, TypeError) as e:
                yield Reject(SPEC.key, split, where, f"missing field {e}")
                break
            except IndexError:
                yield Reject(SPEC.key, split, where, "question or answer index is outside the shared lists")
                break
            if not isinstance(question, str) or not isinstance(answer, str) or not answer.strip():
                yield Reject(SPEC.key, split, where, "question or answer is not text")
                break
            yield SourceInstance(
                task=SPEC.key,
                split=split,
                source_id=f"{image_id}-{r + 1}",
                source=where,
                inputs=dialog_inputs(history, question.strip(), caption=caption.strip()),
                outputs=answer.strip(),
                image_paths=[storage.join(root, rel)],
                meta={
                    "image_id": image_id,
                    "image_file": rel,  # train2014/ or val2014/: VisDial v1.0 trains on COCO val2014 images too
                    "round": r + 1,
                    "question_index": q_idx,
                    "answer_index": a_idx,
                    "gt_index": turn.get("gt_index"),
                    "original_answer": answer.strip(),
                },
            )
            history.append((question.strip(), answer.strip()))
