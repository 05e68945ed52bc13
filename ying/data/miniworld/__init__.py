"""The mini-world: small synthetic source datasets written in the original releases' formats.

Scenes are coloured shapes on pale backgrounds (see ``scenes.py``); every caption, question and
answer is true of its picture. Output is a pure function of (config, seed, tasks): the same inputs
give byte-identical files. Layouts per task are listed in ``writers.py``.

    roots = generate_miniworld("runs/x/sources", cfg.miniworld, seed=0, tasks=["coco", "vqa-v2"])
    # {"coco": "runs/x/sources/coco", "vqa-v2": "runs/x/sources/vqa-v2"}
"""

from __future__ import annotations

import random

from ...config import MiniWorldConfig
from ... import storage
from .scenes import (
    BACKGROUNDS,
    BACKGROUNDS_ZH,
    COLORS,
    COLORS_ZH,
    COUNT_WORDS,
    COUNT_WORDS_ZH,
    FRUITS_BY_COLOR,
    SHAPES,
    SHAPES_ZH,
)
from .video import DIRECTIONS
from .writers import SEEDED_WRITERS, WRITERS, _Sink

__all__ = ["generate_miniworld", "lexicon_corpus", "MINIWORLD_TASKS"]

MINIWORLD_TASKS = tuple(WRITERS)
_VIDEO_TASKS = {"msrvtt-qa"}


def _split_sizes(cfg: MiniWorldConfig, task: str) -> dict[str, int]:
    table = cfg.n_videos if task in _VIDEO_TASKS else cfg.n_images
    sizes = {}
    for split in ("train", "validation", "test"):
        n = table.get(f"{task}/{split}", 0)
        if n < 0:
            raise ValueError(f"miniworld size {task}/{split}={n} must be >= 0")
        if n:
            sizes[split] = n
    return sizes


def generate_miniworld(out_dir: str, cfg: MiniWorldConfig, seed: int, tasks: list[str]) -> dict[str, str]:
    """Write one source root per task under ``out_dir``; returns {task: root}.

    Split sizes come from ``cfg.n_images["<task>/<split>"]`` (``cfg.n_videos`` for video tasks);
    a split with no size is not written.
    """
    unknown = [t for t in tasks if t not in WRITERS]
    if unknown:
        raise ValueError(f"the mini-world can't generate {unknown}; it knows {sorted(WRITERS)}")
    if cfg.image_size < 32:
        raise ValueError(f"miniworld.image_size={cfg.image_size} is too small for readable shapes; use >= 32")
    roots = {}
    for task in tasks:
        root = storage.join(out_dir, task)
        sink = _Sink(root)
        # One stream per (seed, task, split): adding a split or task never changes the others.
        rngs = {split: random.Random(f"miniworld/{seed}/{task}/{split}") for split in ("train", "validation", "test")}
        sizes = _split_sizes(cfg, task)
        if task in _VIDEO_TASKS:
            WRITERS[task](sink, sizes, cfg.image_size, rngs, n_frames=cfg.video_frames)
        elif task in SEEDED_WRITERS:
            WRITERS[task](sink, sizes, cfg.image_size, rngs, seed=seed)
        else:
            WRITERS[task](sink, sizes, cfg.image_size, rngs)
        sink.finish()
        roots[task] = root
    return roots


def lexicon_corpus() -> list[str]:
    """Every word and phrase the mini-world can write (English and Chinese), for a tiny tokenizer."""
    colors, shapes, bgs = sorted(COLORS), list(SHAPES), sorted(BACKGROUNDS)
    out: list[str] = []
    out += colors + shapes + bgs + list(DIRECTIONS) + ["yes", "no", "1", "2", "3"] + list(COUNT_WORDS.values())
    out += [f"a {c} {s}" for c in colors for s in shapes]
    out += [f"on a {b} background" for b in bgs]
    out += [f"{COUNT_WORDS[n]} {'shape' if n == 1 else 'shapes'} on a {b} background:" for n in (1, 2, 3) for b in bgs]
    out += [f"a red circle and a blue square on a {b} background" for b in bgs]
    out += ["a green triangle, a yellow star and a black square on a white background"]
    out += [f"What color is the {s}?" for s in shapes]
    out += [f"What shape is the {c} object?" for c in colors]
    out += ["What shape is in the picture?", "How many shapes are there?"]
    out += [f"Is there a {c} {s}?" for c in colors for s in shapes]
    out += ["what shape is moving?"]
    out += [f"what color is the {s}?" for s in shapes] + [f"which way does the {s} move?" for s in shapes]
    # okvqa, clevr and visual-dialog
    out += sorted({f for fruits in FRUITS_BY_COLOR.values() for f in fruits}) + ["4"]
    out += [f"What fruit is the same color as the {s}?" for s in shapes]
    out += [f"How many sides does the {c} shape have?" for c in colors]
    # One phrase per relation, not the whole cross product: the BPE sees the words without the
    # new tasks' templates outweighing the VQA questions in its merges.
    out += [f"Is the {c} {s} {w} the" for c, s, w in zip(colors, shapes * 2, ("left of", "right of", "above", "below"))]
    out += [f"How many shapes are {w} the" for w in ("left of", "right of", "above", "below")]
    out += [f"{COUNT_WORDS[n]} {'shape' if n == 1 else 'shapes'} on a {b} background" for n in (1, 2, 3) for b in bgs]
    out += [f"what color is the {s}" for s in shapes] + [f"it is {c}" for c in colors]
    out += [f"what shape is the {c} one" for c in colors] + [f"a {s}" for s in shapes]
    out += [f"is there a {s}" for s in shapes] + [f"yes, a {c} one" for c in colors]
    out += ["Caption:", "Dialog so far:", "Q:", "A:", "Question:"]
    out += list(COLORS_ZH.values()) + list(SHAPES_ZH.values()) + list(BACKGROUNDS_ZH.values())
    out += list(COUNT_WORDS_ZH.values())
    out += [f"一个{COLORS_ZH[c]}的{SHAPES_ZH[s]}" for c in colors for s in shapes]
    out += [f"在{BACKGROUNDS_ZH[b]}的背景上" for b in bgs]
    out += [f"{BACKGROUNDS_ZH[b]}的背景上有{COUNT_WORDS_ZH[n]}图形" for b in bgs for n in (1, 2, 3)]
    out += ["一个红色的圆形和一个蓝色的正方形在灰色的背景上", "一个绿色的三角形、一个黄色的星形和一个黑色的正方形在白色的背景上"]
    return list(dict.fromkeys(out))
