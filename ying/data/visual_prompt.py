"""The paper's visual referring prompt: red rectangles drawn on the image around the regions a task
asks about (Figure 2, left)."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw

__all__ = ["BOX_COLOR", "draw_region_box"]

BOX_COLOR = (255, 0, 0)


def draw_region_box(image_bytes: bytes, boxes: list[list[float]], width: int | None = None,
                    labels: list[str] | None = None) -> bytes:
    """Outline each (x, y, w, h) box in red and re-encode in the source format.

    ``labels`` (one per box) are written in red at each box's top-left corner, so that names the
    text uses ("person2") point at the region they mean (VCR).

    With no boxes the source bytes come back unchanged. ``width`` defaults to about 1% of the
    shorter side, at least 2 px. JPEG is written at quality 95 with full-resolution chroma so a
    thin red line keeps its colour; PNG stays lossless.
    """
    if not boxes:
        return image_bytes
    with Image.open(io.BytesIO(image_bytes)) as src:
        fmt = src.format
        img = src.convert("RGB") if fmt == "JPEG" or src.mode not in ("RGB", "RGBA") else src.copy()
    W, H = img.size
    line = width if width is not None else max(2, round(min(W, H) / 100))
    draw = ImageDraw.Draw(img)
    if labels is not None and len(labels) != len(boxes):
        raise ValueError(f"{len(labels)} labels for {len(boxes)} boxes")
    for i, box in enumerate(boxes):
        if len(box) != 4:
            raise ValueError(f"box {box} must be [x, y, w, h]")
        x, y, w, h = (float(v) for v in box)
        if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > W or y + h > H:
            raise ValueError(f"box [x={x}, y={y}, w={w}, h={h}] lies outside the {W}x{H} image")
        x0, y0 = int(round(x)), int(round(y))
        x1, y1 = max(x0, int(round(x + w)) - 1), max(y0, int(round(y + h)) - 1)
        draw.rectangle([x0, y0, x1, y1], outline=BOX_COLOR, width=line)
        if labels:
            draw.text((x0 + line + 1, y0 + line), labels[i], fill=BOX_COLOR)
    out = io.BytesIO()
    if fmt == "JPEG":
        img.save(out, format="JPEG", quality=95, subsampling=0)
    else:
        img.save(out, format=fmt or "PNG")
    return out.getvalue()
