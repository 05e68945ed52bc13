"""The mini-world's LLaVA-Instruct-150K: ``llava_instruct_150k.json`` and ``images/<12-digit id>.jpg``.

One conversation per picture, as the release has them: a JSON list of ``{id, image, conversations:
[{from: human|gpt, value}]}``, 1-3 rounds, the first human turn holding ``<image>`` before or after
its question. Questions come from the VQA helper (colour, shape, count, is-there) and a description
round from the canonical caption; the gpt turns answer them in full sentences, as LLaVA's do, and
every answer is true of the picture. Images are named like COCO train2017 files (the id, 12 digits),
in an id range of their own.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from .scenes import COUNT_WORDS, Scene, caption_en, random_scene, vqa_questions

if TYPE_CHECKING:
    from .writers import _Sink

__all__ = ["write_llava", "llava_rounds", "ANNOTATION_FILE", "LLAVA_FIRST_ID"]

ANNOTATION_FILE = "llava_instruct_150k.json"
LLAVA_FIRST_ID = 960_001  # apart from the other writers' COCO ids
DESCRIBE = ("Describe the image.", "What do you see in this picture?", "Can you describe what the image shows?")


def _sentence(scene: Scene, question: str, answer: str, question_type: str) -> str:
    """The short VQA answer as a sentence about the scene (shapes have distinct colours and kinds)."""
    if question_type == "what color is the":
        shape = next(s for s in scene.shapes if s.color == answer)
        return f"The {shape.kind} is {answer}."
    if question_type == "what shape is the":  # "What shape is the red object?"
        shape = next(s for s in scene.shapes if s.kind == answer)
        return f"The {shape.color} object is a {answer}."
    if question_type == "what shape is":  # "What shape is in the picture?": a scene of one shape
        shape = next(s for s in scene.shapes if s.kind == answer)
        return f"The picture shows a {shape.color} {answer}."
    if question_type == "how many":
        n = int(answer)
        return f"There {'is' if n == 1 else 'are'} {COUNT_WORDS[n]} {'shape' if n == 1 else 'shapes'} in the picture."
    thing = question.removeprefix("Is there a ").rstrip("?")  # "Is there a red circle?"
    return f"Yes, there is a {thing}." if answer == "yes" else f"No, there is no {thing} in the picture."


def llava_rounds(scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
    """1-3 (question, answer) rounds about the scene: a description (half the time, first) and
    questions of different kinds."""
    n = rng.randint(1, 3)
    rounds = []
    if rng.random() < 0.5:
        caption = caption_en(scene)
        rounds.append((rng.choice(DESCRIBE), caption[0].upper() + caption[1:] + "."))
    for question, answer, _, question_type in vqa_questions(scene, rng, k=n - len(rounds)):
        rounds.append((question, _sentence(scene, question, answer, question_type)))
    return rounds


def write_llava(sink: _Sink, sizes: dict[str, int], size: int, rngs: dict[str, random.Random]) -> None:
    for split in sizes:
        if split != "train":
            raise ValueError(f"llava has only a train split; got {split!r}")
    rng = rngs["train"]
    entries = []
    for i in range(sizes.get("train", 0)):
        image_id = f"{LLAVA_FIRST_ID + i:012d}"
        scene = random_scene(rng, size)
        sink.put_scene_image(f"images/{image_id}.jpg", scene)
        turns = []
        for r, (question, answer) in enumerate(llava_rounds(scene, rng)):
            if r == 0:  # the release has the marker on either side of the first question
                question = f"<image>\n{question}" if rng.random() < 0.5 else f"{question}\n<image>"
            turns += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
        entries.append({"id": image_id, "image": f"{image_id}.jpg", "conversations": turns})
    sink.put_json(ANNOTATION_FILE, entries)
