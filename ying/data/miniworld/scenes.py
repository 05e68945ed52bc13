"""The mini-world's vocabulary, scenes, and the true sentences about them.

A scene is a pale background with 1-3 coloured shapes; within one scene every shape has a distinct
colour AND a distinct kind, so "the circle" and "the red object" always name exactly one shape and
every question has one right answer. Colours are far apart in RGB and far from every background,
and shapes span at least a quarter of the image side, so a 64 px image cut into 16 px patches
still shows them.
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

__all__ = [
    "COLORS",
    "SHAPES",
    "BACKGROUNDS",
    "COLORS_ZH",
    "SHAPES_ZH",
    "BACKGROUNDS_ZH",
    "COUNT_WORDS",
    "COUNT_WORDS_ZH",
    "Shape",
    "Scene",
    "random_scene",
    "draw_scene",
    "encode_jpeg",
    "caption_en",
    "captions_en",
    "captions_zh",
    "vqa_questions",
    "FRUITS_BY_COLOR",
    "knowledge_question",
    "spatial_questions",
    "dialog_rounds",
]

# Well separated in RGB and none of them pale, so none is confused with a background.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 60, 220),
    "yellow": (235, 200, 20),
    "purple": (140, 40, 170),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "star")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "grey": (190, 190, 190),
    "white": (250, 250, 250),
    "beige": (240, 228, 200),
    "pale blue": (200, 222, 245),
    "pale green": (208, 238, 208),
    "pink": (250, 212, 222),
}
COLORS_ZH = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "purple": "紫色", "black": "黑色"}
SHAPES_ZH = {"circle": "圆形", "square": "正方形", "triangle": "三角形", "star": "星形"}
BACKGROUNDS_ZH = {
    "grey": "灰色",
    "white": "白色",
    "beige": "米色",
    "pale blue": "浅蓝色",
    "pale green": "浅绿色",
    "pink": "粉色",
}
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
COUNT_WORDS_ZH = {1: "一个", 2: "两个", 3: "三个"}


@dataclass(frozen=True)
class Shape:
    kind: str  # one of SHAPES
    color: str  # one of COLORS
    box: tuple[int, int, int, int]  # x, y, w, h in pixels (w == h)

    @property
    def center(self) -> tuple[int, int]:
        x, y, w, h = self.box
        return x + w // 2, y + h // 2


@dataclass(frozen=True)
class Scene:
    size: int
    background: str
    shapes: tuple[Shape, ...]


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int = 2) -> bool:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return not (ax + aw + gap <= bx or bx + bw + gap <= ax or ay + ah + gap <= by or by + bh + gap <= ay)


def random_scene(rng: random.Random, size: int, n_shapes: int | None = None) -> Scene:
    """1-3 non-overlapping shapes with distinct colours and kinds on a random pale background."""
    n = n_shapes if n_shapes is not None else rng.randint(1, 3)
    kinds = rng.sample(SHAPES, n)
    colors = rng.sample(sorted(COLORS), n)
    lo, hi = math.ceil(size * 0.28), int(size * 0.40)
    for _ in range(200):
        boxes: list[tuple[int, int, int, int]] = []
        for _ in range(n):
            side = rng.randint(lo, hi)
            box = (rng.randint(0, size - side), rng.randint(0, size - side), side, side)
            if any(_overlaps(box, b) for b in boxes):
                break
            boxes.append(box)
        if len(boxes) == n:
            break
    else:  # a fixed layout that always fits: shapes along the diagonal
        side = lo
        step = (size - side) // max(n - 1, 1)
        boxes = [(i * step, i * step, side, side) for i in range(n)]
    shapes = tuple(Shape(k, c, b) for k, c, b in zip(kinds, colors, boxes))
    return Scene(size=size, background=rng.choice(sorted(BACKGROUNDS)), shapes=shapes)


def draw_shape(draw: ImageDraw.ImageDraw, shape: Shape) -> None:
    x, y, w, h = shape.box
    fill = COLORS[shape.color]
    x1, y1 = x + w - 1, y + h - 1
    if shape.kind == "circle":
        draw.ellipse([x, y, x1, y1], fill=fill)
    elif shape.kind == "square":
        draw.rectangle([x, y, x1, y1], fill=fill)
    elif shape.kind == "triangle":
        draw.polygon([(x + w / 2, y), (x, y1), (x1, y1)], fill=fill)
    elif shape.kind == "star":
        cx, cy, r_out = x + w / 2, y + h / 2, w / 2
        r_in = r_out * 0.5  # a fat star: its centre and arms stay visible at 16 px
        points = []
        for i in range(10):
            r = r_out if i % 2 == 0 else r_in
            a = -math.pi / 2 + i * math.pi / 5
            points.append((cx + r * math.cos(a), cy + r * math.sin(a)))
        draw.polygon(points, fill=fill)
    else:
        raise ValueError(f"unknown shape kind {shape.kind!r}; known: {SHAPES}")


def draw_scene(scene: Scene) -> Image.Image:
    img = Image.new("RGB", (scene.size, scene.size), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(img)
    for shape in scene.shapes:
        draw_shape(draw, shape)
    return img


def encode_jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    # 4:4:4 chroma keeps small saturated shapes (and red boxes) their true colour.
    img.save(buf, format="JPEG", quality=95, subsampling=0)
    return buf.getvalue()


def _a(color: str, kind: str) -> str:
    return f"a {color} {kind}"


def _join_en(parts: list[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def caption_en(scene: Scene) -> str:
    """The canonical caption: 'a red circle and a blue square on a grey background'."""
    return f"{_join_en([_a(s.color, s.kind) for s in scene.shapes])} on a {scene.background} background"


def captions_en(scene: Scene) -> list[str]:
    """Two true captions per scene (COCO has five per image; two keep the mini-world small)."""
    n = len(scene.shapes)
    things = _join_en([_a(s.color, s.kind) for s in scene.shapes])
    noun = "shape" if n == 1 else "shapes"
    return [
        caption_en(scene),
        f"{COUNT_WORDS[n]} {noun} on a {scene.background} background: {things}",
    ]


def captions_zh(scene: Scene) -> list[str]:
    """Two natural Chinese captions, e.g. '一个红色的圆形和一个蓝色的正方形在灰色的背景上'."""
    parts = [f"一个{COLORS_ZH[s.color]}的{SHAPES_ZH[s.kind]}" for s in scene.shapes]
    things = parts[0] if len(parts) == 1 else "、".join(parts[:-1]) + "和" + parts[-1]
    bg = BACKGROUNDS_ZH[scene.background]
    n = len(scene.shapes)
    return [f"{things}在{bg}的背景上", f"{bg}的背景上有{COUNT_WORDS_ZH[n]}图形"]


def vqa_questions(scene: Scene, rng: random.Random, k: int = 3) -> list[tuple[str, str, str, str]]:
    """k true (question, answer, answer_type, question_type) tuples, each of a different kind.

    Four kinds, so answers spread over 6 colours, 4 shapes, 3 counts and a balanced yes/no and no
    single answer dominates (the most common stays near 1/8 of questions).
    """
    kinds = rng.sample(["color", "shape", "count", "exists"], k)
    out = []
    for kind in kinds:
        if kind == "color":
            s = rng.choice(scene.shapes)
            out.append((f"What color is the {s.kind}?", s.color, "other", "what color is the"))
        elif kind == "shape":
            s = rng.choice(scene.shapes)
            if rng.random() < 0.5 or len(scene.shapes) > 1:
                out.append((f"What shape is the {s.color} object?", s.kind, "other", "what shape is the"))
            else:
                out.append(("What shape is in the picture?", s.kind, "other", "what shape is"))
        elif kind == "count":
            out.append(("How many shapes are there?", str(len(scene.shapes)), "number", "how many"))
        else:
            present = {(s.color, s.kind) for s in scene.shapes}
            if rng.random() < 0.5:
                color, shape_kind = rng.choice(sorted(present))
            else:
                while True:
                    color, shape_kind = rng.choice(sorted(COLORS)), rng.choice(SHAPES)
                    if (color, shape_kind) not in present:
                        break
            answer = "yes" if (color, shape_kind) in present else "no"
            out.append((f"Is there a {color} {shape_kind}?", answer, "yes/no", "is there a"))
    return out


# Outside knowledge for OK-VQA-style questions: fruits whose usual colour is each shape colour. The
# first is the majority answer; the others are also true, as OK-VQA's ten annotators disagree.
FRUITS_BY_COLOR: dict[str, tuple[str, ...]] = {
    "red": ("apple", "cherry", "strawberry"),
    "green": ("lime", "kiwi"),
    "blue": ("blueberry",),
    "yellow": ("banana", "lemon"),
    "purple": ("grape", "plum"),
    "black": ("blackberry",),
}
_SIDES = {"triangle": "3", "square": "4"}


def _ten_answers(choices: tuple[str, ...]) -> list[str]:
    """Ten annotator answers with choices[0] the clear majority (6 of 10), the rest shared out."""
    if len(choices) == 1:
        return [choices[0]] * 10
    rest = choices[1:]
    return [choices[0]] * 6 + [rest[i % len(rest)] for i in range(4)]


def knowledge_question(scene: Scene, rng: random.Random) -> tuple[str, list[str], str]:
    """One (question, ten answers, OK-VQA question_type) needing a little knowledge beyond the picture.

    Fruit colours are OK-VQA's "five" (cooking and food); a polygon's sides are "nine" (science and
    technology). Every answer is true of the scene.
    """
    polygons = [s for s in scene.shapes if s.kind in _SIDES]
    if polygons and rng.random() < 0.4:
        s = rng.choice(polygons)
        return f"How many sides does the {s.color} shape have?", [_SIDES[s.kind]] * 10, "nine"
    s = rng.choice(scene.shapes)
    return f"What fruit is the same color as the {s.kind}?", _ten_answers(FRUITS_BY_COLOR[s.color]), "five"


def _left_of(a: Shape, b: Shape) -> bool:
    return a.box[0] + a.box[2] <= b.box[0]


def _above(a: Shape, b: Shape) -> bool:
    return a.box[1] + a.box[3] <= b.box[1]


def _relation_holds(a: Shape, word: str, b: Shape) -> bool:
    return {"left of": _left_of(a, b), "right of": _left_of(b, a), "above": _above(a, b), "below": _above(b, a)}[word]


def spatial_questions(scene: Scene, rng: random.Random) -> list[tuple[str, str, int]]:
    """Two CLEVR-style (question, answer, question_family_index) over a scene of 2-3 shapes.

    Relations are only asked where they are unambiguous: "left of" between shapes whose boxes don't
    overlap along x (likewise "above" along y), and a count only where every other shape lies
    clearly on one side of the reference. Non-overlapping shapes always give at least one such pair.
    Families (ours, numbered like CLEVR's): 0 relation yes/no, 1 count left/right, 2 count above/below.
    """
    if len(scene.shapes) < 2:
        raise ValueError("spatial questions need a scene of at least 2 shapes")
    out: list[tuple[str, str, int]] = []
    # A count question, where some shape splits the others cleanly along an axis.
    counts = []
    for ref in scene.shapes:
        others = [s for s in scene.shapes if s is not ref]
        if all(_left_of(s, ref) or _left_of(ref, s) for s in others):
            side = rng.choice(["left of", "right of"])
            counts.append((ref, side, 1, sum(_relation_holds(s, side, ref) for s in others)))
        if all(_above(s, ref) or _above(ref, s) for s in others):
            side = rng.choice(["above", "below"])
            counts.append((ref, side, 2, sum(_relation_holds(s, side, ref) for s in others)))
    if counts:
        ref, side, family, n = rng.choice(counts)
        out.append((f"How many shapes are {side} the {ref.color} {ref.kind}?", str(n), family))
    # Relation yes/no questions until there are two, each about a different pair where possible.
    pairs = [(a, b) for a in scene.shapes for b in scene.shapes if a is not b]
    rng.shuffle(pairs)
    for a, b in pairs:
        words = []
        if _left_of(a, b) or _left_of(b, a):
            words += ["left of", "right of"]
        if _above(a, b) or _above(b, a):
            words += ["above", "below"]
        if not words:
            continue
        word = rng.choice(words)
        answer = "yes" if _relation_holds(a, word, b) else "no"
        out.append((f"Is the {a.color} {a.kind} {word} the {b.color} {b.kind}?", answer, 0))
        if len(out) == 2:
            break
    return out


def dialog_rounds(scene: Scene, rng: random.Random, n_rounds: int = 2) -> tuple[str, list[tuple[str, str]]]:
    """A VisDial-style (caption, [(question, answer)]) in that dataset's lower-case, unpunctuated style.

    The caption gives only the count and background, so the dialog has something left to ask.
    """
    n = len(scene.shapes)
    caption = f"{COUNT_WORDS[n]} {'shape' if n == 1 else 'shapes'} on a {scene.background} background"
    present = {s.kind: s for s in scene.shapes}
    kinds = rng.sample(["color", "exists", "shape"], n_rounds)
    rounds = []
    for kind in kinds:
        if kind == "color":
            s = rng.choice(scene.shapes)
            rounds.append((f"what color is the {s.kind}", f"it is {s.color}"))
        elif kind == "shape":
            s = rng.choice(scene.shapes)
            rounds.append((f"what shape is the {s.color} one", f"a {s.kind}"))
        else:
            asked = rng.choice(SHAPES)
            answer = f"yes, a {present[asked].color} one" if asked in present else "no"
            rounds.append((f"is there a {asked}", answer))
    return caption, rounds
