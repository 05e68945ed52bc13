import io

import pytest
from PIL import Image

from ying.data.visual_prompt import draw_region_box


def make(fmt: str, color=(200, 200, 200), size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    img = Image.new("RGB", size, color)
    if fmt == "JPEG":
        img.save(buf, format="JPEG", quality=95)
    else:
        img.save(buf, format=fmt)
    return buf.getvalue()


def is_red(p, tol=0):
    return p[0] >= 255 - tol and p[1] <= tol and p[2] <= tol


def test_png_box_exact():
    src = make("PNG")
    out = draw_region_box(src, [[10, 8, 30, 20]], width=2)
    img = Image.open(io.BytesIO(out))
    assert img.format == "PNG"
    img = img.convert("RGB")
    for x, y in [(10, 8), (39, 8), (10, 27), (39, 27), (25, 8), (25, 9), (10, 18), (11, 18), (39, 18), (25, 27)]:
        assert is_red(img.getpixel((x, y))), (x, y)
    for x, y in [(25, 18), (13, 12), (36, 24), (0, 0), (63, 47), (5, 18), (45, 18)]:
        assert img.getpixel((x, y)) == (200, 200, 200), (x, y)


def test_jpeg_box_reencoded_as_jpeg():
    src = make("JPEG")
    out = draw_region_box(src, [[8, 8, 40, 30]])
    img = Image.open(io.BytesIO(out))
    assert img.format == "JPEG" and img.size == (64, 48)
    img = img.convert("RGB")
    assert is_red(img.getpixel((28, 8)), tol=40) and is_red(img.getpixel((8, 20)), tol=40)
    for x, y in [(28, 22), (2, 2), (60, 44)]:
        assert all(abs(c - 200) <= 6 for c in img.getpixel((x, y)))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_no_box_is_byte_identical(fmt):
    src = make(fmt)
    assert draw_region_box(src, []) is src
    assert draw_region_box(src, None) is src


@pytest.mark.parametrize("box", [[50, 10, 20, 10], [-1, 0, 10, 10], [0, 40, 10, 10], [5, 5, 0, 3]])
def test_box_outside_raises(box):
    with pytest.raises(ValueError, match="outside"):
        draw_region_box(make("PNG"), [box])
