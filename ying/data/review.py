"""The quality-check review page (the paper's Stage III): a sample of records per task and split,
as one self-contained HTML file an annotator can open anywhere.

For every task and split, ``per_split`` records are drawn at random (seeded: the same data and seed
give the same page). Each record shows its images inline as ``data:`` URIs (a video's frames and a
multi-image instance's images side by side, in order) with its instruction, inputs, outputs and
meta beside them. Every text field is HTML-escaped. An index at the top links each section.

Only the ``task`` column is read to draw the sample; the chosen rows' row groups are read after,
so memory stays bounded on paper-size splits.
"""

from __future__ import annotations

import base64
import html
import io
import json
import random
from typing import Any

from .. import storage
from .build import _parquet_files, records_dir
from .schema import RECORD_SCHEMA, SPLITS

__all__ = ["sample_records", "render_review_page", "write_review_page"]

_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp", "BMP": "image/bmp"}


def sample_records(data_dir: str, per_split: int = 20, seed: int = 0) -> dict[tuple[str, str], list[dict]]:
    """``{(task, split): [record, ...]}``: up to ``per_split`` records drawn at random per task and split,
    in storage order. The draw depends only on the seed, the task, the split and the records' order."""
    import pyarrow.parquet as pq

    chosen: dict[tuple[str, str], list[dict]] = {}
    for split in SPLITS:
        fs, files = _parquet_files(records_dir(data_dir, split))
        positions: dict[str, list[tuple[int, int]]] = {}  # task -> [(file index, row in file)]
        for fi, f in enumerate(files):
            with fs.open(f, "rb") as fh:
                tasks = pq.read_table(fh, columns=["task"]).column("task").to_pylist()
            for row, task in enumerate(tasks):
                positions.setdefault(task, []).append((fi, row))
        wanted: dict[int, set[int]] = {}
        picks: dict[str, list[tuple[int, int]]] = {}
        for task, pos in sorted(positions.items()):
            rng = random.Random(f"{seed}\x00{task}\x00{split}")
            pick = sorted(rng.sample(pos, min(per_split, len(pos))))
            picks[task] = pick
            for fi, row in pick:
                wanted.setdefault(fi, set()).add(row)
        rows: dict[tuple[int, int], dict] = {}
        for fi, row_set in wanted.items():
            with fs.open(files[fi], "rb") as fh:
                pf = pq.ParquetFile(fh)
                start = 0
                for rg in range(pf.metadata.num_row_groups):
                    n = pf.metadata.row_group(rg).num_rows
                    inside = [r for r in row_set if start <= r < start + n]
                    if inside:
                        table = pf.read_row_group(rg).select(RECORD_SCHEMA.names)
                        for r in inside:
                            rows[(fi, r)] = table.slice(r - start, 1).to_pylist()[0]
                    start += n
        for task, pick in picks.items():
            chosen[(task, split)] = [rows[p] for p in pick]
    return chosen


def _image_uri(data: bytes, max_side: int) -> tuple[str, str]:
    """(data: URI, note). Images wider or taller than ``max_side`` are shown as a JPEG thumbnail,
    so a page of thousands of samples stays openable; the note says so."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, size = img.format, img.size
            if max(size) > max_side:
                thumb = img.convert("RGB")
                thumb.thumbnail((max_side, max_side))
                buf = io.BytesIO()
                thumb.save(buf, format="JPEG", quality=85)
                uri = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
                return uri, f"{fmt} {size[0]}x{size[1]}, shown as {thumb.size[0]}x{thumb.size[1]} thumbnail"
    except Exception as e:  # QC rejects these; a page built from unchecked data still renders
        return "", f"does not decode: {type(e).__name__}"
    mime = _MIME.get(fmt, "application/octet-stream")
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii"), f"{fmt} {size[0]}x{size[1]}"


def _pretty_meta(meta: Any) -> str:
    try:
        return json.dumps(json.loads(meta), indent=2, ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError):
        return str(meta)


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
.rec{display:flex;gap:1.2em;border-top:1px solid #ccc;padding:.8em 0}
.imgs{display:flex;gap:.4em;flex-wrap:nowrap;overflow-x:auto;max-width:55%;flex:0 0 auto}
figure{margin:0}figure img{max-height:320px;display:block}figcaption{font-size:.75em;color:#666}
.text{flex:1;min-width:0}.text dt{font-weight:600;margin-top:.4em}
pre{white-space:pre-wrap;word-break:break-word;background:#f6f6f6;padding:.4em;margin:.2em 0}
.idx{columns:3;font-size:.9em}
"""


def render_review_page(samples: dict[tuple[str, str], list[dict]], title: str, max_image_side: int = 768) -> str:
    esc = html.escape
    keys = sorted(samples, key=lambda k: (k[0], SPLITS.index(k[1]) if k[1] in SPLITS else 99))
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        "<p>For each record check that the output answers the instruction and inputs for these images, "
        "that any red box marks the region the text refers to, and that the text is well formed.</p>",
        '<ul class="idx">',
    ]
    for task, split in keys:
        out.append(f'<li><a href="#{esc(task)}--{esc(split)}">{esc(task)} / {esc(split)}</a> '
                   f"({len(samples[(task, split)])})</li>")
    out.append("</ul>")
    for task, split in keys:
        records = samples[(task, split)]
        out.append(f'<h2 id="{esc(task)}--{esc(split)}">{esc(task)} / {esc(split)}: {len(records)} records</h2>')
        for rec in records:
            figures = []
            for k, data in enumerate(rec.get("images") or []):
                uri, note = _image_uri(bytes(data), max_image_side)
                img = f'<img src="{uri}" alt="image {k}">' if uri else ""
                figures.append(f"<figure>{img}<figcaption>#{k}: {esc(note)}</figcaption></figure>")
            fields = [("id", rec.get("id")), ("category / lang", f"{rec.get('category')} / {rec.get('lang')}"),
                      ("instruction", rec.get("instruction")), ("inputs", rec.get("inputs")),
                      ("outputs", rec.get("outputs")), ("meta", _pretty_meta(rec.get("meta")))]
            text = "".join(f"<dt>{esc(name)}</dt><dd><pre>{esc(str(value or ''))}</pre></dd>" for name, value in fields)
            out.append(f'<div class="rec"><div class="imgs">{"".join(figures)}</div>'
                       f'<dl class="text">{text}</dl></div>')
    out.append("</body></html>")
    return "\n".join(out)


def write_review_page(data_dir: str, out_path: str, per_split: int = 20, seed: int = 0,
                      max_image_side: int = 768) -> dict[str, Any]:
    """Write the review page for the records under ``data_dir`` to ``out_path`` (local or s3://).

    Returns ``{"path", "sections", "records"}``.
    """
    samples = sample_records(data_dir, per_split=per_split, seed=seed)
    page = render_review_page(samples, title=f"Ying quality-check review: {per_split} random records "
                              f"per task and split (seed {seed})", max_image_side=max_image_side)
    storage.write_bytes_atomic(out_path, page.encode("utf-8"))
    return {"path": out_path, "sections": len(samples), "records": sum(len(v) for v in samples.values())}
