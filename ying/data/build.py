"""Unify source datasets into instruction records with Ray Data.

The driver lists instances (annotation parsing only, cheap); Ray Data then reads and checks image
bytes, draws region boxes, samples video frames and picks instructions in parallel, one plain
function per instance (``materialize_record``, testable without Ray). Output layout:

    <out_dir>/records/<split>/*.parquet   RECORD_SCHEMA rows
    <out_dir>/rejects/rejects.jsonl       {task, split, source, reason}, adapter and build rejects

For every task and split, read = written + rejected.
"""

from __future__ import annotations

import dataclasses
import io
import json
import warnings
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from .. import storage
from ..config import YingConfig
from .instructions import pick_instruction
from .schema import RECORD_SCHEMA, REJECT_SCHEMA, SPLITS, Reject, SourceInstance, make_record_id
from .tasks import get_task
from .video import VideoReadError, sample_frames
from .visual_prompt import draw_region_box

__all__ = [
    "check_image_bytes",
    "materialize_record",
    "build_unified",
    "read_split",
    "read_records",
    "records_dir",
    "rejects_path",
]

_REJECT_COLS = ("reject_source", "reject_reason")


def records_dir(out_dir: str, split: str) -> str:
    return storage.join(out_dir, "records", split)


def rejects_path(out_dir: str) -> str:
    return storage.join(out_dir, "rejects", "rejects.jsonl")


def check_image_bytes(data: bytes, max_image_pixels: int) -> str | None:
    """Why these bytes are not a usable image, or None when they decode fully."""
    if not data:
        return "empty image file"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                w, h = img.size
                if w <= 0 or h <= 0:
                    return f"image has size {w}x{h}"
                if w * h > max_image_pixels:
                    return f"image {w}x{h} exceeds max_image_pixels={max_image_pixels} (decompression bomb?)"
                img.verify()
            with Image.open(io.BytesIO(data)) as img:
                img.load()  # verify() misses truncated data; a full decode doesn't
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return f"decompression bomb: {e}"
    except Image.UnidentifiedImageError:  # Pillow's own message names only an in-memory buffer
        return f"image does not decode: not an image format Pillow knows (first bytes {data[:16]!r})"
    except Exception as e:  # Pillow raises many types for corrupt data
        return f"image does not decode: {type(e).__name__}: {e}"
    return None


def _read(path: str) -> bytes:
    fs, p = storage.filesystem(path)
    with fs.open(p, "rb") as f:
        return f.read()


def materialize_record(
    instance_dict: dict[str, Any], seed: int, frames_per_video: int, max_image_pixels: int
) -> dict[str, Any]:
    """A SourceInstance (as a dict) -> a RECORD_SCHEMA row, or a REJECT_SCHEMA row with its reason."""
    inst = SourceInstance(**instance_dict)

    def reject(reason: str) -> dict[str, str]:
        return Reject(inst.task, inst.split, inst.source, reason).to_row()

    spec = get_task(inst.task).SPEC
    images: list[bytes] = []
    frame_count = None
    if inst.video_path:
        try:
            images = sample_frames(inst.video_path, n=frames_per_video)
        except VideoReadError as e:
            return reject(str(e))
        frame_count = len(images)
    for k, path in enumerate(inst.image_paths):
        try:
            data = _read(path)
        except (FileNotFoundError, OSError) as e:
            return reject(f"can't read image {path}: {e}")
        problem = check_image_bytes(data, max_image_pixels)
        if problem:
            return reject(f"{path}: {problem}")
        # SourceInstance.boxes[k] is image k's box, or a list of its boxes (None/empty: untouched).
        box = inst.boxes[k] if inst.boxes and k < len(inst.boxes) else None
        if box:
            image_boxes = box if isinstance(box[0], (list, tuple)) else [box]
            labels = (inst.box_labels[k] if inst.box_labels and k < len(inst.box_labels) else None)
            try:
                data = draw_region_box(data, image_boxes, labels=labels)
            except ValueError as e:
                return reject(f"{path}: {e}")
        images.append(data)
    if not images:
        return reject("instance has no image or video")
    record_id = make_record_id(inst.task, inst.split, inst.source_id)
    meta = dict(inst.meta)
    meta.update(
        {
            "original_answer": inst.outputs,
            "source_id": inst.source_id,
            "source": inst.source,
            "boxes": inst.boxes,
        }
    )
    if frame_count is not None:
        meta["frames"] = frame_count
    return {
        "id": record_id,
        "task": inst.task,
        "category": spec.category,
        "lang": spec.lang,
        "split": inst.split,
        "images": images,
        "instruction": pick_instruction(inst.task, record_id, seed),
        "inputs": inst.inputs,
        "outputs": inst.outputs,
        "meta": json.dumps(meta, ensure_ascii=False, sort_keys=True),
    }


# One row shape for records and rejects, so a single dataset carries both.
_BUILD_SCHEMA = pa.schema(list(RECORD_SCHEMA) + [pa.field(c, pa.string()) for c in _REJECT_COLS])


def _materialize_batch(batch: pa.Table, seed: int, frames_per_video: int, max_image_pixels: int) -> pa.Table:
    """Ray wrapper around ``materialize_record`` for a batch of JSON-encoded instances."""
    rows = []
    for text in batch.column("instance").to_pylist():
        out = materialize_record(json.loads(text), seed, frames_per_video, max_image_pixels)
        if "reason" in out:
            row = {c: "" for c in RECORD_SCHEMA.names}
            row.update(images=[], task=out["task"], split=out["split"],
                       reject_source=out["source"], reject_reason=out["reason"])
        else:
            row = {**out, "reject_source": "", "reject_reason": ""}
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=_BUILD_SCHEMA)


def _list_instances(cfg: YingConfig, sources: dict[str, str]) -> tuple[list[dict], list[Reject], dict]:
    items: list[dict] = []
    rejects: list[Reject] = []
    stats: dict[str, dict[str, dict[str, int]]] = {}
    cap = cfg.data.max_per_split
    for task in cfg.data.tasks:
        if task not in sources:
            raise ValueError(f"no source root for task {task!r}; got roots for {sorted(sources)}")
        adapter = get_task(task)
        for split in adapter.SPEC.splits:
            counts = stats.setdefault(task, {}).setdefault(split, {"read": 0, "written": 0, "rejected": 0})
            for item in adapter.read_instances(sources[task], split):
                if cap is not None and counts["read"] >= cap:
                    break
                counts["read"] += 1
                if isinstance(item, Reject):
                    rejects.append(item)
                    counts["rejected"] += 1
                else:
                    items.append({"instance": json.dumps(dataclasses.asdict(item), ensure_ascii=False)})
    return items, rejects, stats


def _write_filesystem(path: str):
    """(pyarrow-compatible filesystem or None, path) for Ray's writers and readers."""
    if "://" not in path:
        return None, path
    fs, p = storage.filesystem(path)
    return fs, p


def build_unified(cfg: YingConfig, sources: dict[str, str], out_dir: str) -> dict:
    """Build every task in ``cfg.data.tasks`` from ``sources`` (task -> root); returns
    ``{task: {split: {read, written, rejected}}}``."""
    import ray

    items, rejects, stats = _list_instances(cfg, sources)
    for split in SPLITS:
        d = records_dir(out_dir, split)
        if storage.exists(d):  # a rebuild replaces, never mixes with, old shards
            storage.filesystem(d)[0].rm(storage.filesystem(d)[1], recursive=True)

    built_rejects: list[dict] = []
    if items:
        from ray.data.expressions import col

        ds = (
            ray.data.from_items(items, override_num_blocks=max(1, min(64, len(items) // 50)))
            .map_batches(
                _materialize_batch,
                batch_format="pyarrow",
                batch_size=16,
                fn_kwargs={
                    "seed": cfg.run.seed,
                    "frames_per_video": cfg.data.frames_per_video,
                    "max_image_pixels": cfg.data.max_image_pixels,
                },
            )
            .materialize()  # each instance is read and decoded once; the filters below reuse it
        )
        built_rejects = (
            ds.filter(expr=col("reject_reason") != "").select_columns(["task", "split", *_REJECT_COLS]).take_all()
        )
        rejected_per_split: dict[str, int] = {}
        for r in built_rejects:
            rejected_per_split[r["split"]] = rejected_per_split.get(r["split"], 0) + 1
        for split in SPLITS:
            n_items = sum(c.get(split, {}).get("read", 0) - c.get(split, {}).get("rejected", 0) for c in stats.values())
            if n_items - rejected_per_split.get(split, 0) <= 0:
                continue
            wfs, wpath = _write_filesystem(records_dir(out_dir, split))
            part = ds.filter(expr=(col("split") == split) & (col("reject_reason") == ""))
            part.select_columns(RECORD_SCHEMA.names).write_parquet(
                wpath, filesystem=wfs, min_rows_per_file=2000
            )

    for r in built_rejects:
        rejects.append(Reject(r["task"], r["split"], r["reject_source"], r["reject_reason"]))
        stats[r["task"]][r["split"]]["rejected"] += 1
    for task, splits in stats.items():
        for split, c in splits.items():
            c["written"] = c["read"] - c["rejected"]

    lines = "".join(json.dumps(r.to_row(), ensure_ascii=False) + "\n" for r in rejects)
    storage.write_bytes_atomic(rejects_path(out_dir), lines.encode("utf-8"))
    return stats


def _parquet_files(path: str) -> tuple[Any, list[str]]:
    fs, p = storage.filesystem(path)
    if not fs.exists(p):
        return fs, []
    return fs, sorted(f for f in fs.find(p) if f.endswith(".parquet"))


def read_split(out_dir: str, split: str, tasks: list[str] | None = None):
    """The records of one split as a Ray Dataset, optionally only some tasks."""
    import ray

    path = records_dir(out_dir, split)
    fs, files = _parquet_files(path)
    if not files:
        ds = ray.data.from_arrow(RECORD_SCHEMA.empty_table())
    else:
        rfs = fs if "://" in out_dir else None
        ds = ray.data.read_parquet(files, filesystem=rfs, schema=RECORD_SCHEMA)
    if tasks is not None:
        from ray.data.expressions import col

        ds = ds.filter(expr=col("task").is_in(list(tasks)))
    return ds


def read_records(out_dir: str, split: str, tasks: list[str] | None = None) -> list[dict]:
    """The records of one split as a list of dicts, with pyarrow only (for small consumers)."""
    fs, files = _parquet_files(records_dir(out_dir, split))
    rows: list[dict] = []
    for f in files:
        with fs.open(f, "rb") as fh:
            table = pq.read_table(fh, schema=RECORD_SCHEMA)
        rows.extend(table.to_pylist())
    if tasks is not None:
        wanted = set(tasks)
        rows = [r for r in rows if r["task"] in wanted]
    return rows


def count_records(out_dir: str, split: str, tasks: list[str] | None = None) -> int:
    """How many records a split holds, reading only the ``task`` column (no image bytes)."""
    fs, files = _parquet_files(records_dir(out_dir, split))
    wanted = None if tasks is None else set(tasks)
    n = 0
    for f in files:
        with fs.open(f, "rb") as fh:
            column = pq.read_table(fh, columns=["task"]).column("task").to_pylist()
        n += len(column) if wanted is None else sum(t in wanted for t in column)
    return n


def read_rejects(out_dir: str) -> list[dict]:
    path = rejects_path(out_dir)
    if not storage.exists(path):
        return []
    fs, p = storage.filesystem(path)
    with fs.open(p, "r", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


_ = REJECT_SCHEMA  # rejects follow REJECT_SCHEMA's columns, stored as JSONL
