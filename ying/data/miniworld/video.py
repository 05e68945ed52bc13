"""Synthetic clips for MSRVTT-QA: one shape crossing a pale background, written as MP4 with PyAV."""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass

import av
from PIL import Image, ImageDraw

from .scenes import BACKGROUNDS, COLORS, SHAPES, Shape, draw_shape

__all__ = ["DIRECTIONS", "Clip", "random_clip", "clip_frames", "encode_mp4", "clip_questions"]

DIRECTIONS = ("left", "right", "up", "down")


@dataclass(frozen=True)
class Clip:
    size: int
    background: str
    kind: str
    color: str
    direction: str
    side: int
    cross: int  # the coordinate that stays fixed (y for left/right, x for up/down)


def random_clip(rng: random.Random, size: int) -> Clip:
    side = rng.randint(math.ceil(size * 0.28), int(size * 0.36))
    return Clip(
        size=size,
        background=rng.choice(sorted(BACKGROUNDS)),
        kind=rng.choice(SHAPES),
        color=rng.choice(sorted(COLORS)),
        direction=rng.choice(DIRECTIONS),
        side=side,
        cross=rng.randint(0, size - side),
    )


def shape_at(clip: Clip, t: int, n_frames: int) -> Shape:
    """The moving shape in frame t: it goes edge to edge over the clip."""
    travel = clip.size - clip.side
    pos = round(travel * t / max(n_frames - 1, 1))
    if clip.direction in ("left", "up"):
        pos = travel - pos
    if clip.direction in ("left", "right"):
        box = (pos, clip.cross, clip.side, clip.side)
    else:
        box = (clip.cross, pos, clip.side, clip.side)
    return Shape(clip.kind, clip.color, box)


def clip_frames(clip: Clip, n_frames: int) -> list[Image.Image]:
    frames = []
    for t in range(n_frames):
        img = Image.new("RGB", (clip.size, clip.size), BACKGROUNDS[clip.background])
        draw_shape(ImageDraw.Draw(img), shape_at(clip, t, n_frames))
        frames.append(img)
    return frames


def encode_mp4(frames: list[Image.Image], fps: int = 8) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        # FFmpeg's own MPEG-4 Part 2 encoder: byte-identical output run to run (libx264 was not).
        stream = container.add_stream("mpeg4", rate=fps, options={"qmin": "1", "qmax": "3"})
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        stream.bit_rate = 4_000_000  # with qmax 3: near-lossless, colours stay true at 64 px
        for t, img in enumerate(frames):
            frame = av.VideoFrame.from_image(img)
            frame.pts = t
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def clip_questions(clip: Clip) -> list[tuple[str, str]]:
    """Three true (question, one-word answer) pairs, in MSRVTT-QA's lower-case style."""
    return [
        ("what shape is moving?", clip.kind),
        (f"what color is the {clip.kind}?", clip.color),
        (f"which way does the {clip.kind} move?", clip.direction),
    ]
