import io
import random

import pytest
from PIL import Image

from ying.data.miniworld.video import clip_frames, encode_mp4, random_clip
from ying.data.video import VideoReadError, sample_frames, uniform_frame_indices


def test_uniform_indices():
    assert uniform_frame_indices(16, 8) == [1, 3, 5, 7, 9, 11, 13, 15]
    assert uniform_frame_indices(80, 8) == [5, 15, 25, 35, 45, 55, 65, 75]
    assert len(uniform_frame_indices(3, 8)) == 8 and max(uniform_frame_indices(3, 8)) == 2
    with pytest.raises(ValueError):
        uniform_frame_indices(0, 8)


def test_sample_frames_picks_the_uniform_frames(tmp_path):
    # a clip whose frame t is recognisable: the shape moves right one step per frame
    clip = random_clip(random.Random(0), 64)
    clip = type(clip)(**{**clip.__dict__, "direction": "right", "color": "black", "background": "white"})
    frames = clip_frames(clip, 16)
    path = tmp_path / "video0.mp4"
    path.write_bytes(encode_mp4(frames))
    got = sample_frames(str(path), n=8)
    assert len(got) == 8
    def left_edge(im):
        im = im.convert("L")
        return min(x for x in range(64) for y in range(64) if im.getpixel((x, y)) < 100)
    for jpeg, idx in zip(got, uniform_frame_indices(16, 8)):
        im = Image.open(io.BytesIO(jpeg))
        assert im.format == "JPEG" and im.size == (64, 64)
        assert abs(left_edge(im) - left_edge(frames[idx])) <= 1


def test_unreadable_video(tmp_path):
    bad = tmp_path / "video1.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(VideoReadError, match="can't read video"):
        sample_frames(str(bad))
    with pytest.raises(VideoReadError):
        sample_frames(str(tmp_path / "missing.mp4"))
