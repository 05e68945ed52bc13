"""Video frames for video tasks: n frames at the centres of n equal segments (the paper samples 8)."""

from __future__ import annotations

import io

import av

from .. import storage

__all__ = ["VideoReadError", "uniform_frame_indices", "sample_frames"]


class VideoReadError(ValueError):
    """A video that can't be opened or decoded."""


def uniform_frame_indices(total: int, n: int) -> list[int]:
    """Index of the middle frame of each of n equal segments of ``total`` frames.

    A video shorter than n frames repeats frames, so the result always has n entries.
    """
    if total <= 0:
        raise ValueError(f"a video with {total} frames has nothing to sample")
    if n <= 0:
        raise ValueError(f"n={n} frames requested; need at least 1")
    return [min(total - 1, int((i + 0.5) * total / n)) for i in range(n)]


def _open(video_path: str):
    if "://" in video_path:
        fs, p = storage.filesystem(video_path)
        with fs.open(p, "rb") as f:
            return av.open(io.BytesIO(f.read()))
    return av.open(video_path)


def sample_frames(video_path: str, n: int = 8, quality: int = 95) -> list[bytes]:
    """n uniformly spaced frames of the video, each as JPEG bytes."""
    try:
        with _open(video_path) as container:
            if not container.streams.video:
                raise VideoReadError(f"{video_path}: no video stream")
            # Count by decoding: the header's frame count is missing or wrong in many files.
            total = sum(1 for _ in container.decode(video=0))
        wanted = uniform_frame_indices(total, n)
        keep = set(wanted)
        by_index: dict[int, bytes] = {}
        with _open(video_path) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i in keep:
                    buf = io.BytesIO()
                    frame.to_image().save(buf, format="JPEG", quality=quality, subsampling=0)
                    by_index[i] = buf.getvalue()
                if i >= wanted[-1]:
                    break
    except VideoReadError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise VideoReadError(f"can't read video {video_path}: {e}") from None
    missing = [i for i in wanted if i not in by_index]
    if missing:
        raise VideoReadError(f"{video_path}: frames {missing} of {total} could not be decoded")
    return [by_index[i] for i in wanted]
