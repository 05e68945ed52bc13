"""The mini-world's plain text: English and Chinese sentences about its own scenes, for ``pretrain``.

A random-init LLM knows no language. The paper's Ziya-13B was pretrained on bilingual text (and
tuned as a ``<human>:`` / ``<bot>:`` assistant) before any image; this is the tiny preset's
stand-in: short documents about mini-world scenes (the objects, colours, counts, backgrounds and
positions that ``scenes.py`` draws), half in English, half in Chinese, some as text-only dialogue
turns in the chat format the prompt uses.

The text is generated here from the scene vocabulary with its own sentence forms and its own
seeded random stream: it never reads a task's records, and none of its sentences is a held-out
task's caption (every Chinese caption form of ``captions_zh`` is avoided: no "...在X的背景上" and
no "X的背景上有N图形"). Same seed, same text.

    docs = generate_text(seed=0, n=4000, split="train")   # [{"lang": "en", "text": "..."}, ...]
"""

from __future__ import annotations

import random

from .scenes import (
    BACKGROUNDS_ZH,
    COLORS_ZH,
    COUNT_WORDS,
    COUNT_WORDS_ZH,
    SHAPES_ZH,
    Scene,
    Shape,
    random_scene,
)

__all__ = ["generate_text", "text_records", "write_text_records", "TEXT_TASKS", "LANGS"]

TEXT_TASKS = {"en": "text-en", "zh": "text-zh"}  # the pretrain stage's task keys, by language
LANGS = tuple(TEXT_TASKS)
_CANVAS = 64  # positions only decide left/right/above/below: any canvas size tells the same story

# Relations, as scenes.py decides them (boxes apart along an axis), in both languages.
_REL_ZH = {"left of": "左边", "right of": "右边", "above": "上面", "below": "下面"}


def _left_of(a: Shape, b: Shape) -> bool:
    return a.box[0] + a.box[2] <= b.box[0]


def _above(a: Shape, b: Shape) -> bool:
    return a.box[1] + a.box[3] <= b.box[1]


def _relations(scene: Scene) -> list[tuple[Shape, str, Shape]]:
    out = []
    for a in scene.shapes:
        for b in scene.shapes:
            if a is b:
                continue
            if _left_of(a, b):
                out += [(a, "left of", b), (b, "right of", a)]
            if _above(a, b):
                out += [(a, "above", b), (b, "below", a)]
    return out


# --- English -----------------------------------------------------------------------------------
def _en_things(scene: Scene) -> str:
    parts = [f"a {s.color} {s.kind}" for s in scene.shapes]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _en_count(scene: Scene) -> str:
    n = len(scene.shapes)
    return "There is one shape in the picture." if n == 1 else f"There are {COUNT_WORDS[n]} shapes in the picture."


def _en_sentences(scene: Scene, rng: random.Random) -> list[str]:
    things, bg = _en_things(scene), scene.background
    s = rng.choice(scene.shapes)
    out = [
        f"The picture shows {things} on a {bg} background.",
        f"There is {things} on a {bg} background.",
        f"In this image we can see {things}.",
        f"The background is {bg}.",
        _en_count(scene),
        f"The {s.kind} is {s.color}.",
        f"The {s.color} shape is a {s.kind}.",
    ]
    rels = _relations(scene)
    if rels:
        a, word, b = rng.choice(rels)
        out.append(f"The {a.color} {a.kind} is {word} the {b.color} {b.kind}.")
    return out


_EN_OPENERS = [("Hello, can you help me with a picture?", "Sure."), ("Please answer my question.", "OK."),
               ("I have a question about an image.", "Sure, go ahead.")]


def _en_turns(scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
    things, bg = _en_things(scene), scene.background
    s = rng.choice(scene.shapes)
    return [
        ("What is in the picture?", f"{things} on a {bg} background"),
        ("Describe the image.", f"The image shows {things} on a {bg} background."),
        ("Tell me what you see.", f"I see {things} on a {bg} background."),
        ("What color is the background?", bg),
        ("How many shapes can you see?", str(len(scene.shapes))),
        (f"What color is the {s.kind}?", s.color),
        (f"Which shape is {s.color}?", f"the {s.kind}"),
    ]


# --- Chinese -----------------------------------------------------------------------------------
def _zh_one(s: Shape) -> str:
    return f"一个{COLORS_ZH[s.color]}的{SHAPES_ZH[s.kind]}"


def _zh_things(scene: Scene) -> str:
    parts = [_zh_one(s) for s in scene.shapes]
    return parts[0] if len(parts) == 1 else "、".join(parts[:-1]) + "和" + parts[-1]


def _zh_sentences(scene: Scene, rng: random.Random) -> list[str]:
    things, bg = _zh_things(scene), BACKGROUNDS_ZH[scene.background]
    n = COUNT_WORDS_ZH[len(scene.shapes)]
    s = rng.choice(scene.shapes)
    color, kind = COLORS_ZH[s.color], SHAPES_ZH[s.kind]
    out = [
        f"图片里有{things}，背景是{bg}的。",
        f"这幅画上画着{things}。",
        f"画面中一共有{n}图形：{things}。",
        f"背景是{bg}的，上面有{n}图形。",
        f"这个{kind}是{color}的。",
        f"{color}的图形是一个{kind}。",
        f"我们可以看到{things}。",
    ]
    rels = _relations(scene)
    if rels:
        a, word, b = rng.choice(rels)
        out.append(f"{COLORS_ZH[a.color]}的{SHAPES_ZH[a.kind]}在{COLORS_ZH[b.color]}的{SHAPES_ZH[b.kind]}的{_REL_ZH[word]}。")
    return out


_ZH_OPENERS = [("你好，可以帮我看一幅画吗？", "好的。"), ("请按照我说的回答问题。", "好的。"),
               ("我有一个关于画面的问题。", "没问题，请说。")]


def _zh_turns(scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
    things, bg = _zh_things(scene), BACKGROUNDS_ZH[scene.background]
    s = rng.choice(scene.shapes)
    n = COUNT_WORDS_ZH[len(scene.shapes)]
    return [
        ("图片里有什么？", f"{things}，背景是{bg}的。"),
        ("说说这幅画。", f"这幅画上画着{things}。"),
        ("请讲一讲画面上的东西。", f"画面中一共有{n}图形：{things}。"),
        ("你看到了什么？", f"我看到了{things}。"),
        ("背景是什么颜色的？", f"{bg}。"),
        ("一共有几个图形？", f"{n}。"),
        (f"{SHAPES_ZH[s.kind]}是什么颜色的？", f"{COLORS_ZH[s.color]}。"),
        (f"哪个图形是{COLORS_ZH[s.color]}的？", f"{SHAPES_ZH[s.kind]}。"),
    ]


def _dialogue(scene: Scene, lang: str, rng: random.Random) -> str:
    """A chat in the prompt's format (``<human>:`` / ``<bot>:``): one turn, or an opening exchange and
    then the question, as the zero-shot Chinese prompt is laid out (paper Table 12)."""
    question, answer = rng.choice((_en_turns if lang == "en" else _zh_turns)(scene, rng))
    last = f"<human>:\n{question}\n\n<bot>:\n{answer}"
    if rng.random() < 0.5:
        return last
    opener, reply = rng.choice(_EN_OPENERS if lang == "en" else _ZH_OPENERS)
    return f"<human>:\n{opener}\n<bot>:\n{reply}\n{last}"


# --- documents ---------------------------------------------------------------------------------
def _document(scene: Scene, lang: str, rng: random.Random) -> str:
    """One short document: a chat (half of them), else one to three sentences about the scene."""
    if rng.random() < 0.5:
        return _dialogue(scene, lang, rng)
    sentences = (_en_sentences if lang == "en" else _zh_sentences)(scene, rng)
    picked = rng.sample(sentences, rng.randint(1, 3))
    return (" " if lang == "en" else "").join(picked)


def generate_text(seed: int, n: int, split: str = "train") -> list[dict[str, str]]:
    """``n`` documents (``{"lang", "text"}``), alternating English and Chinese, each about a fresh scene.

    Deterministic for (seed, split); a stream of its own, so the mini-world's tasks are untouched.
    """
    if n < 0:
        raise ValueError(f"generate_text: n={n} must be >= 0")
    rng = random.Random(f"miniworld-text/{seed}/{split}")
    docs = []
    for i in range(n):
        lang = LANGS[i % len(LANGS)]
        docs.append({"lang": lang, "text": _document(random_scene(rng, _CANVAS), lang, rng)})
    return docs


def text_records(seed: int, sizes: dict[str, int]) -> list[dict]:
    """Unified records (``RECORD_SCHEMA``) of the generated text: ``sizes`` is documents per split.

    Text only: no images, empty instruction and inputs, the document as ``outputs`` (the processor
    trains a causal LM on the whole of it); task ``text-en`` / ``text-zh`` by language.
    """
    import json

    from ying.data.schema import make_record_id

    records = []
    for split, n in sizes.items():
        for i, doc in enumerate(generate_text(seed, n, split)):
            task = TEXT_TASKS[doc["lang"]]
            records.append({
                "id": make_record_id(task, split, f"{i:06d}"), "task": task, "category": "generation",
                "lang": doc["lang"], "split": split, "images": [], "instruction": "", "inputs": "",
                "outputs": doc["text"], "meta": json.dumps({"source": "miniworld-text", "seed": seed}),
            })
    return records


def write_text_records(out_dir: str, seed: int, sizes: dict[str, int]) -> dict[str, dict[str, int]]:
    """``text_records`` into ``<out_dir>/records/<split>/`` (the records' own writer, through Ray Data);
    what was there before is replaced. Returns ``{task: {split: written}}``."""
    import ray.data

    from ying.data.records import clear_records
    from ying.data.split_writer import write_split_records

    clear_records(out_dir)  # the sink names its files anew: a re-run would add to the old ones
    counts = write_split_records(ray.data.from_items(text_records(seed, sizes)), out_dir)
    return {task: {split: c["written"] for split, c in splits.items()} for task, splits in counts.items()}
