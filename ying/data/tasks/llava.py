"""LLaVA-Instruct-150K (Liu et al., 2023): ``llava_instruct_150k.json`` and its COCO images.

The file is one JSON list (230 MB, streamed here an entry at a time) of conversations::

    {"id": "000000033471", "image": "000000033471.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat are the colors of the bus in the image?"},
                       {"from": "gpt", "value": "The bus in the image is white and red."},
                       {"from": "human", "value": "What feature can be seen on the back of the bus?"},
                       {"from": "gpt", "value": "The back of the bus features an advertisement."}]}

The first human turn carries the ``<image>`` marker, before the question ("<image>\\nQuestion") or
after it ("Question\\n<image>"). Images are COCO train2017 files named by the COCO id; they are read
from ``<root>/images/`` unless ``data.llava_image_dir`` names another folder (local or s3://), such
as an existing COCO ``train2017`` download. ``id`` repeats in the release (one picture has a
conversation, a detailed description and a reasoning entry), so instance ids use the entry's
position in the list.

One instance per gpt turn: ``inputs`` holds the earlier rounds as the dialogue history and the human
question just before it, laid out as Visual Dialog's (``_common.dialog_inputs``, without a caption),
with ``<image>`` taken out; ``outputs`` is the gpt turn. Instances of one conversation share
``SourceInstance.group``, so the build counts the conversation once in ``read``. A conversation is
used whole or rejected whole, with one reason: a missing image, no gpt turn, a gpt turn with no
question before it, an empty turn or a malformed entry. A human turn left unanswered at the end
gives no instance and is no reason to reject the rounds before it.

Category: "generation", the category of Visual Dialog, the closest of the 40 tasks: multi-turn
conversations about one image whose answers are free-form sentences and paragraphs (descriptions,
explanations), not short answers to score by exact match as "vqa" does, and only a third of them
is the step-by-step "complex reasoning" that "reasoning" would suggest.

LLaVA is not one of the paper's 40 tasks: ``stage2_mix=False`` keeps it out of Stage II's default
mix; the ``llava`` variant (``ying.train.variants``) trains on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

from ... import storage
from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._common import FolderIndex, dialog_inputs, json_items

if TYPE_CHECKING:
    from ...config import DataConfig

SPEC = TaskSpec(key="llava", category="generation", lang="en", splits=("train",), rephrase=False, stage2_mix=False)

ANNOTATION_FILE = "llava_instruct_150k.json"
IMAGE_DIR = "images"  # under the source root, unless data.llava_image_dir names another folder
IMAGE_MARKER = "<image>"
_ROLES = {"human": "question", "gpt": "answer"}


def options(data: DataConfig) -> dict[str, Any]:
    """``read_instances``' keyword options from the data config (read once, at the build's edge)."""
    return {"image_dir": data.llava_image_dir}


def _rounds(conversations: Any) -> tuple[list[tuple[int, str, str]], str | None]:
    """``[(gpt turn index, question, answer)]`` of a conversation, or the reason it can't be used.

    The marker comes out of every human turn (only the first should hold it); a human turn left
    unanswered at the end gives no round."""
    if not isinstance(conversations, list):
        return [], "conversations is not a list"
    rounds: list[tuple[int, str, str]] = []
    question: str | None = None
    for j, turn in enumerate(conversations):
        if not isinstance(turn, dict) or turn.get("from") not in _ROLES or not isinstance(turn.get("value"), str):
            return [], f"turn {j} is not a {{from: human|gpt, value: text}} object"
        if turn["from"] == "human":
            text = turn["value"].replace(IMAGE_MARKER, "").strip()
            if not text:
                return [], f"turn {j}: empty human question"
            if question is not None:
                return [], f"turn {j}: two human turns in a row"
            question = text
            continue
        answer = turn["value"].strip()
        if question is None:
            return [], f"turn {j}: a gpt turn with no human question before it"
        if not answer:
            return [], f"turn {j}: empty gpt answer"
        rounds.append((j, question, answer))
        question = None
    if not rounds:
        return [], "no gpt turn"
    return rounds, None


def read_instances(root: str, split: str, image_dir: str | None = None) -> Iterator[SourceInstance | Reject]:
    if split not in SPEC.splits:
        raise ValueError(f"llava has splits {SPEC.splits}; got {split!r}")
    path = storage.join(root, ANNOTATION_FILE)
    images = image_dir or storage.join(root, IMAGE_DIR)
    present = FolderIndex()  # one listing per image folder, however many conversations
    for entry in json_items(SPEC.key, split, path):
        if isinstance(entry, Reject):
            yield entry
            continue
        where, item = entry
        if not isinstance(item, dict):
            yield Reject(SPEC.key, split, where, "entry is not a JSON object")
            continue
        image = item.get("image")
        if not isinstance(image, str) or not image.strip():
            yield Reject(SPEC.key, split, where, "no image: a text-only conversation has nothing to show the model")
            continue
        rounds, problem = _rounds(item.get("conversations"))
        if problem:
            yield Reject(SPEC.key, split, where, problem)
            continue
        folder, _, name = storage.join(images, image).rpartition("/")
        if not present.has(folder, name):
            yield Reject(SPEC.key, split, where, f"missing image file {storage.join(images, image)}")
            continue
        llava_id = str(item.get("id", ""))
        index = where.rsplit("[", 1)[1].rstrip("]")  # the entry's position: ids repeat in the release
        stem = image.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        history: list[tuple[str, str]] = []
        for r, (j, question, answer) in enumerate(rounds):
            yield SourceInstance(
                task=SPEC.key,
                split=split,
                source_id=f"{llava_id}-{index}-{r + 1}",
                source=f"{where}.conversations[{j}]",
                inputs=dialog_inputs(history, question),
                outputs=answer,
                image_paths=[storage.join(images, image)],
                group=where,
                meta={
                    "llava_id": llava_id,
                    "image_file": image,
                    # The COCO id of a train2017 file name, for the contamination guard's COCO checks.
                    "image_id": int(stem) if stem.isdigit() else None,
                    "round": r + 1,
                    "rounds": len(rounds),
                },
            )
            history.append((question, answer))
