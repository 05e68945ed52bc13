"""The quality-check review pages (the paper's Stage III): a sample of records per task and split,
as self-contained HTML files an annotator can open anywhere.

For every task and split, ``per_split`` records are drawn at random (seeded: the same data and seed
give the same pages). Each (task, split) gets its own page, ``<name>/<task>--<split>.html`` beside
the index ``<name>.html``, which lists every page with its record count. On a page a record is one
table row: its images inline as ``data:`` URIs (a video's frames and a multi-image instance's
images side by side, in order, as thumbnails), then instruction, inputs and output; its id and meta
are folded into a ``<details>`` element. Every text field is HTML-escaped.

Only the ``task`` column is read to draw the sample, and one (task, split) page's rows are read,
rendered and written at a time, so memory stays bounded on paper-size splits.
"""

from __future__ import annotations

import base64
import html
import io
import json
import random
from typing import Any, Iterator

from .. import storage
from .records import read_columns, split_dir
from .schema import RECORD_SCHEMA, SPLITS

__all__ = ["sample_positions", "sample_records", "render_review_page", "render_review_index", "write_review_page"]

_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp", "BMP": "image/bmp"}


def sample_positions(data_dir: str, per_split: int = 20, seed: int = 0) -> dict[tuple[str, str], list[tuple[str, int]]]:
    """``{(task, split): [(file, row in file), ...]}``: up to ``per_split`` rows drawn at random per
    task and split, in storage order, reading only the ``task`` column. The draw depends only on the
    seed, the task, the split and the records' order."""
    picks: dict[tuple[str, str], list[tuple[str, int]]] = {}
    for split in SPLITS:
        files: list[str] = []
        positions: dict[str, list[tuple[int, int]]] = {}  # task -> [(file index, row in file)]
        for fi, (f, table) in enumerate(read_columns(data_dir, split, ["task"])):
            files.append(f)
            for row, task in enumerate(table.column("task").to_pylist()):
                positions.setdefault(task, []).append((fi, row))
        for task, pos in sorted(positions.items()):
            rng = random.Random(f"{seed}\x00{task}\x00{split}")
            picks[(task, split)] = [(files[fi], row) for fi, row in sorted(rng.sample(pos, min(per_split, len(pos))))]
    return picks


def _read_rows(data_dir: str, split: str, positions: list[tuple[str, int]]) -> list[dict]:
    """The records at ``positions`` (in that order), reading only the row groups that hold them."""
    import pyarrow.parquet as pq

    fs, _ = storage.filesystem(split_dir(data_dir, split))
    wanted: dict[str, set[int]] = {}
    for f, row in positions:
        wanted.setdefault(f, set()).add(row)
    rows: dict[tuple[str, int], dict] = {}
    for f, row_set in wanted.items():
        with fs.open(f, "rb") as fh:
            pf = pq.ParquetFile(fh)
            start = 0
            for rg in range(pf.metadata.num_row_groups):
                n = pf.metadata.row_group(rg).num_rows
                inside = [r for r in row_set if start <= r < start + n]
                if inside:
                    table = pf.read_row_group(rg).select(RECORD_SCHEMA.names)
                    for r in inside:
                        rows[(f, r)] = table.slice(r - start, 1).to_pylist()[0]
                start += n
    return [rows[p] for p in positions]


def _iter_samples(data_dir: str, per_split: int, seed: int) -> Iterator[tuple[tuple[str, str], list[dict]]]:
    picks = sample_positions(data_dir, per_split, seed)
    for key in sorted(picks, key=lambda k: (k[0], SPLITS.index(k[1]))):
        yield key, _read_rows(data_dir, key[1], picks[key])


def sample_records(data_dir: str, per_split: int = 20, seed: int = 0) -> dict[tuple[str, str], list[dict]]:
    """``{(task, split): [record, ...]}``: the records ``sample_positions`` draws (all in memory:
    for tests and small dirs; the page writer reads one task and split at a time)."""
    return dict(_iter_samples(data_dir, per_split, seed))


def _image_uri(data: bytes, max_side: int) -> tuple[str, str]:
    """(data: URI, note). Images wider or taller than ``max_side`` are shown as a JPEG thumbnail,
    so a page of many samples stays openable; the note says so."""
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
body{font-family:system-ui,sans-serif;margin:1.2em;color:#222}
table{border-collapse:collapse;width:100%;table-layout:fixed}
th,td{border-top:1px solid #ccc;padding:.35em .5em;vertical-align:top;text-align:left;font-size:.9em}
th{background:#f3f3f3;position:sticky;top:0}
col.n{width:2.5em}col.img{width:30%}
.imgs{display:flex;gap:.3em;overflow-x:auto}
.imgs img{max-height:140px;display:block}
td.text{white-space:pre-wrap;word-break:break-word}
details pre{white-space:pre-wrap;word-break:break-word;background:#f6f6f6;padding:.4em;margin:.2em 0;font-size:.85em}
nav{margin:.5em 0}nav a{margin-right:1em}
"""

_CHECK = ("For each record check that the output answers the instruction and inputs for these images, "
          "that any red box marks the region the text refers to, and that the text is well formed.")


def _page_name(task: str, split: str) -> str:
    return f"{task}--{split}.html"


def render_review_page(task: str, split: str, records: list[dict], max_image_side: int = 768,
                       nav: dict[str, str] | None = None) -> str:
    """One (task, split) page: a table with one row per record. ``nav``: link label -> href."""
    esc = html.escape
    title = f"{task} / {split}: {len(records)} records"
    links = "".join(f'<a href="{esc(href)}">{esc(label)}</a>' for label, href in (nav or {}).items())
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
           f"<nav>{links}</nav>" if links else "", f'<h1 id="{esc(task)}--{esc(split)}">{esc(title)}</h1>',
           f"<p>{esc(_CHECK)}</p>",
           '<table><colgroup><col class="n"><col class="img"><col><col><col></colgroup>',
           "<tr><th>#</th><th>images</th><th>instruction</th><th>inputs</th><th>output</th></tr>"]
    for n, rec in enumerate(records, start=1):
        figures, notes = [], []
        for k, data in enumerate(rec.get("images") or []):
            uri, note = _image_uri(bytes(data), max_image_side)
            notes.append(f"#{k}: {note}")
            figures.append(f'<img src="{uri}" alt="image {k}" title="{esc(notes[-1])}">' if uri
                           else f"<span>{esc(notes[-1])}</span>")
        meta = (f"<details><summary>{esc(str(rec.get('id') or ''))} · {esc(str(rec.get('category')))} / "
                f"{esc(str(rec.get('lang')))}</summary><p>{esc('; '.join(notes))}</p>"
                f"<pre>{esc(_pretty_meta(rec.get('meta')))}</pre></details>")
        out.append(f'<tr><td>{n}</td><td><div class="imgs">{"".join(figures)}</div>{meta}</td>'
                   f'<td class="text">{esc(str(rec.get("instruction") or ""))}</td>'
                   f'<td class="text">{esc(str(rec.get("inputs") or ""))}</td>'
                   f'<td class="text">{esc(str(rec.get("outputs") or ""))}</td></tr>')
    out += ["</table>", f"<nav>{links}</nav>" if links else "", "</body></html>"]
    return "\n".join(x for x in out if x)


def render_review_index(pages: list[tuple[str, str, int, str]], title: str) -> str:
    """The index: one link per (task, split) page, ``pages`` as (task, split, records, href)."""
    esc = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>", f"<h1>{esc(title)}</h1>",
           f"<p>{esc(_CHECK)}</p>", "<table><tr><th>task</th><th>split</th><th>records</th></tr>"]
    for task, split, n, href in pages:
        out.append(f'<tr><td><a href="{esc(href)}">{esc(task)}</a></td><td>{esc(split)}</td><td>{n}</td></tr>')
    out += ["</table>", "</body></html>"]
    return "\n".join(out)


def write_review_page(data_dir: str, out_path: str, per_split: int = 20, seed: int = 0,
                      max_image_side: int = 768) -> dict[str, Any]:
    """Write the review index to ``out_path`` (local or s3://, e.g. ``<dir>/review.html``) and one
    page per task and split beside it (``<dir>/review/<task>--<split>.html``), one page's records
    in memory at a time.

    Returns ``{"path": index, "pages": [page paths], "sections", "records"}``.
    """
    stem = out_path[:-5] if out_path.endswith(".html") else out_path
    folder = stem.rsplit("/", 1)[-1]
    samples = list(sample_positions(data_dir, per_split, seed).items())
    samples.sort(key=lambda kv: (kv[0][0], SPLITS.index(kv[0][1])))
    index_rows, paths, total = [], [], 0
    for i, ((task, split), positions) in enumerate(samples):
        nav = {"index": f"../{out_path.rsplit('/', 1)[-1]}"}
        if i:
            nav["previous"] = _page_name(*samples[i - 1][0])
        if i + 1 < len(samples):
            nav["next"] = _page_name(*samples[i + 1][0])
        records = _read_rows(data_dir, split, positions)
        page = render_review_page(task, split, records, max_image_side, nav)
        path = storage.join(stem, _page_name(task, split))
        storage.write_bytes_atomic(path, page.encode("utf-8"))
        paths.append(path)
        index_rows.append((task, split, len(records), f"{folder}/{_page_name(task, split)}"))
        total += len(records)
    title = f"Ying quality-check review: {per_split} random records per task and split (seed {seed})"
    storage.write_bytes_atomic(out_path, render_review_index(index_rows, title).encode("utf-8"))
    return {"path": out_path, "pages": paths, "sections": len(samples), "records": total}
