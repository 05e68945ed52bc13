"""Unify source datasets into instruction records with Ray Data, in one streaming pass.

The driver streams the listing (annotation parsing only, cheap) into chunk files; each Ray Data
actor call then reads and checks a chunk's image bytes, draws region boxes, samples video frames,
picks instructions (one plain function per instance: ``materialize_record``, testable without Ray)
and writes the chunk's records to Parquet itself, a row group at a time. Only rejects and counts come
back to the driver, so memory stays bounded whatever the dataset's size. Output layout:

    <out_dir>/records/<split>/<task>-<split>-<index>.parquet   RECORD_SCHEMA rows, one file per chunk
    <out_dir>/rejects/rejects.jsonl   {task, split, source, reason}: adapter and build rejects

For every task and split, read = written + rejected (checked, not assumed).
"""

from __future__ import annotations

import io
import json
import warnings
from typing import TYPE_CHECKING, Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from .. import storage
from .instructions import pick_instruction
from .schema import RECORD_SCHEMA, REJECT_SCHEMA, SPLITS, Reject, SourceInstance, make_record_id
from .tasks import get_task
from .visual_prompt import draw_region_box

if TYPE_CHECKING:  # Ray workers import this module; they need no pydantic config classes
    from ..config import YingConfig

__all__ = [
    "check_image_bytes",
    "materialize_record",
    "build_unified",
    "build_unified_local",
    "build_chunk",
    "iter_listing",
    "read_split",
    "read_records",
    "read_rejects",
    "count_records",
    "records_dir",
    "rejects_path",
]

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
    instance_dict: dict[str, Any], seed: int, frames_per_video: int, max_image_pixels: int,
    train_instructions: int | None = None,
) -> dict[str, Any]:
    """A SourceInstance (as a dict) -> a RECORD_SCHEMA row, or a REJECT_SCHEMA row with its reason.

    ``train_instructions``: training records draw from that many of their pool's instructions
    (paper Figure 5); evaluation records always draw from the whole pool.
    """
    inst = SourceInstance(**instance_dict)

    def reject(reason: str) -> dict[str, str]:
        return Reject(inst.task, inst.split, inst.source, reason).to_row()

    spec = get_task(inst.task).SPEC
    images: list[bytes] = []
    frame_count = None
    if inst.video_path:
        from .video import VideoReadError, sample_frames  # PyAV loads only where there are videos

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
    # An adapter's own original_answer wins (multiple choice keeps the option's text, not "(B) text"):
    # the rephrase stage checks rewrites against it.
    meta.setdefault("original_answer", inst.outputs)
    meta.update(
        {
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
        "instruction": pick_instruction(inst.task, record_id, seed,
                                        n_instructions=train_instructions if inst.split == "train" else None),
        "inputs": inst.inputs,
        "outputs": inst.outputs,
        "meta": json.dumps(meta, ensure_ascii=False, sort_keys=True),
    }


# Listing rows: what the driver's listing writes into chunk files for the builders, one per source
# record read.
# kind "instance" carries a SourceInstance as JSON; "reject" an adapter reject with its reason;
# "count" closes a (task, split) with how many source records it read, so the driver can check that
# no chunk was lost on the way (read = written + rejected).
_LISTING_SCHEMA = pa.schema(
    [("kind", pa.string()), ("task", pa.string()), ("split", pa.string()), ("index", pa.int64()),
     ("instance", pa.string()), ("source", pa.string()), ("reason", pa.string()), ("read", pa.int64())]
)
# What a build chunk reports back to the driver: rejects with their reasons, records written per
# task and split, and the listing's read counts. Small whatever the chunk: images never travel
# back through the object store.
_OUTCOME_SCHEMA = pa.schema(
    [("task", pa.string()), ("split", pa.string()), ("index", pa.int64()), ("source", pa.string()),
     ("reason", pa.string()), ("written", pa.int64()), ("read", pa.int64())]
)
# Listing rows per chunk (one builder call, one Parquet file per split it touches): big enough that
# per-call overhead is small, small enough that 2 CPUs get a dozen chunks from a few thousand
# records to balance the slow ones (videos, big images) between them, and the tail stays short.
_CHUNK_ROWS = 256
# Parquet row groups are flushed at whichever limit comes first: memory per builder stays bounded
# by one row group, however big the chunk or the images.
_ROW_GROUP_ROWS = 256
_ROW_GROUP_BYTES = 32 * 1024 * 1024


def iter_listing(task: str, root: str, split: str, cap: int | None) -> Iterator[dict[str, Any]]:
    """Listing rows of one task's split: its adapter's instances and rejects, then a count row.
    Parses annotations only; no image is opened."""
    adapter = get_task(task)
    n = 0
    for item in adapter.read_instances(root, split):
        if cap is not None and n >= cap:
            break
        row = {"kind": "instance", "task": task, "split": split, "index": n, "instance": "",
               "source": "", "reason": "", "read": 0}
        if isinstance(item, Reject):
            row.update(kind="reject", source=item.source, reason=item.reason)
        else:
            # vars(), not dataclasses.asdict: asdict deep-copies every nested list, and cost a third
            # of the listing's time, which runs serially before the build starts.
            row["instance"] = json.dumps(vars(item), ensure_ascii=False)
        n += 1
        yield row
    yield {"kind": "count", "task": task, "split": split, "index": n, "instance": "", "source": "",
           "reason": "", "read": n}


class _SplitWriters:
    """One Parquet file per split for one chunk, written a row group at a time."""

    def __init__(self, out_dir: str, file_name: str):
        self.out_dir = out_dir
        self.file_name = file_name
        self.pending: dict[str, list[dict]] = {}
        self.pending_bytes: dict[str, int] = {}
        self.written: dict[tuple[str, str], int] = {}
        self._open: dict[str, tuple[Any, pq.ParquetWriter]] = {}

    def add(self, record: dict[str, Any]) -> None:
        split = record["split"]
        self.pending.setdefault(split, []).append(record)
        self.pending_bytes[split] = self.pending_bytes.get(split, 0) + sum(len(b) for b in record["images"])
        key = (record["task"], split)
        self.written[key] = self.written.get(key, 0) + 1
        if len(self.pending[split]) >= _ROW_GROUP_ROWS or self.pending_bytes[split] >= _ROW_GROUP_BYTES:
            self._flush(split)

    def _flush(self, split: str) -> None:
        rows = self.pending.pop(split, [])
        self.pending_bytes.pop(split, None)
        if not rows:
            return
        if split not in self._open:
            fs, d = storage.filesystem(records_dir(self.out_dir, split))
            fs.makedirs(d, exist_ok=True)
            fh = fs.open(f"{d.rstrip('/')}/{self.file_name}", "wb")
            # zstd: the text columns shrink ~2x more than with snappy; JPEG bytes don't shrink either way.
            self._open[split] = (fh, pq.ParquetWriter(fh, RECORD_SCHEMA, compression="zstd"))
        self._open[split][1].write_table(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA))

    def close(self) -> None:
        for split in list(self.pending):
            self._flush(split)
        for fh, writer in self._open.values():
            writer.close()
            fh.close()
        self._open.clear()


def build_chunk(
    rows: list[dict[str, Any]], out_dir: str, seed: int, frames_per_video: int, max_image_pixels: int,
    train_instructions: int | None = None,
) -> list[dict[str, Any]]:
    """Materialize a chunk of listing rows and write its records straight to
    ``<out_dir>/records/<split>/<task>-<split>-<index>.parquet`` (named by the chunk's first row, so
    a retried task overwrites its own file instead of adding a duplicate). Returns outcome rows:
    rejects with their reasons, records written per task and split, and read counts. The unit of
    work of both builds."""
    if not rows:
        return []
    first = rows[0]
    writers = _SplitWriters(out_dir, f"{first['task']}-{first['split']}-{first['index']:09d}.parquet")
    outcomes: list[dict[str, Any]] = []

    def outcome(row: dict, source: str = "", reason: str = "", written: int = 0, read: int = 0) -> dict:
        return {"task": row["task"], "split": row["split"], "index": row["index"], "source": source,
                "reason": reason, "written": written, "read": read}

    try:
        for row in rows:
            if row["kind"] == "count":
                outcomes.append(outcome(row, read=row["read"]))
                continue
            if row["kind"] == "reject":
                outcomes.append(outcome(row, source=row["source"], reason=row["reason"]))
                continue
            inst = json.loads(row["instance"])
            try:
                out = materialize_record(inst, seed, frames_per_video, max_image_pixels, train_instructions)
            except Exception as e:  # one broken instance (or an adapter's bug) must not kill the run
                out = {"source": inst.get("source", ""), "reason": f"build failed: {type(e).__name__}: {e}"}
            if "reason" in out:
                outcomes.append(outcome(row, source=out["source"], reason=out["reason"]))
            else:
                writers.add(out)
    finally:
        writers.close()
    outcomes += [{"task": t, "split": s, "index": first["index"], "source": "", "reason": "", "written": n,
                  "read": 0} for (t, s), n in writers.written.items()]
    return outcomes


def _write_listing(cfg: YingConfig, sources: dict[str, str], listing_dir: str) -> list[str]:
    """Stream every task's listing rows into Parquet chunk files of ``_CHUNK_ROWS`` rows under
    ``listing_dir``; returns their paths. The driver holds one chunk at a time, never the whole
    dataset's instances, and workers read the chunks from storage rather than the object store."""
    fs, base = storage.filesystem(listing_dir)
    if fs.exists(base):
        fs.rm(base, recursive=True)
    fs.makedirs(base, exist_ok=True)
    paths: list[str] = []

    def flush(rows: list[dict]) -> None:
        path = storage.join(listing_dir, f"chunk-{len(paths):07d}.parquet")
        cfs, p = storage.filesystem(path)
        with cfs.open(p, "wb") as f:
            pq.write_table(pa.Table.from_pylist(rows, schema=_LISTING_SCHEMA), f, compression="zstd")
        paths.append(path)

    chunk: list[dict] = []
    for w in _task_splits(cfg, sources):
        for row in iter_listing(w["task"], w["root"], w["split"], cfg.data.max_per_split):
            chunk.append(row)
            if len(chunk) >= _CHUNK_ROWS:
                flush(chunk)
                chunk = []
    if chunk:
        flush(chunk)
    return paths


def _build_listing_files(batch: pa.Table, out_dir: str, seed: int, frames_per_video: int,
                         max_image_pixels: int, train_instructions: int | None = None) -> pa.Table:
    """Ray wrapper around ``build_chunk``: listing chunk files in, outcome rows out."""
    outcomes: list[dict] = []
    for path in batch.column("path").to_pylist():
        fs, p = storage.filesystem(path)
        with fs.open(p, "rb") as f:
            rows = pq.read_table(f, schema=_LISTING_SCHEMA).to_pylist()
        outcomes += build_chunk(rows, out_dir, seed, frames_per_video, max_image_pixels, train_instructions)
    return pa.Table.from_pylist(outcomes, schema=_OUTCOME_SCHEMA)


class _ChunkBuilder:
    """Ray Data actor around ``_build_listing_files``: imports once, then builds chunk after chunk.
    Its arguments come per call (no constructor arguments to keep alive in the object store)."""

    def __call__(self, batch: pa.Table, **kwargs: Any) -> pa.Table:
        return _build_listing_files(batch, **kwargs)


def _task_splits(cfg: YingConfig, sources: dict[str, str]) -> list[dict[str, str]]:
    """Every (task, root, split) to read, in config order; fails early on a task without a source."""
    out = []
    for task in cfg.data.tasks:
        if task not in sources:
            raise ValueError(f"no source root for task {task!r}; got roots for {sorted(sources)}")
        out += [{"task": task, "root": sources[task], "split": s} for s in get_task(task).SPEC.splits]
    return out


def _clear_records(out_dir: str) -> None:
    for split in SPLITS:
        d = records_dir(out_dir, split)
        if storage.exists(d):  # a rebuild replaces, never mixes with, old shards
            fs, p = storage.filesystem(d)
            fs.rm(p, recursive=True)


def _finish(out_dir: str, cfg: YingConfig, outcomes: list[dict]) -> dict:
    """Fold outcomes into ``{task: {split: {read, written, rejected}}}``, check read = written +
    rejected, and write rejects.jsonl (in task, split and source order, whatever order chunks ended)."""
    stats = {t: {s: {"read": 0, "written": 0, "rejected": 0} for s in get_task(t).SPEC.splits}
             for t in cfg.data.tasks}
    task_order = {t: i for i, t in enumerate(cfg.data.tasks)}
    split_order = {s: i for i, s in enumerate(SPLITS)}
    rejects: list[Reject] = []
    for o in sorted(outcomes, key=lambda o: (task_order[o["task"]], split_order[o["split"]], o["index"])):
        c = stats[o["task"]][o["split"]]
        c["read"] += o["read"]
        c["written"] += o["written"]
        if o["reason"]:
            rejects.append(Reject(o["task"], o["split"], o["source"], o["reason"]))
            c["rejected"] += 1
    bad = {f"{t}/{s}": c for t, splits in stats.items() for s, c in splits.items()
           if c["read"] != c["written"] + c["rejected"]}
    if bad:  # a lost or duplicated chunk; never report counts that don't add up
        raise RuntimeError(f"build counts don't reconcile (read != written + rejected): {bad}")
    lines = "".join(json.dumps(r.to_row(), ensure_ascii=False) + "\n" for r in rejects)
    storage.write_bytes_atomic(rejects_path(out_dir), lines.encode("utf-8"))
    return stats


def build_unified(cfg: YingConfig, sources: dict[str, str], out_dir: str) -> dict:
    """Build every task in ``cfg.data.tasks`` from ``sources`` (task -> root); returns
    ``{task: {split: {read, written, rejected}}}``.

    One streaming pass: the driver streams the listing (annotations only) into chunk files of
    ``_CHUNK_ROWS`` instances; then one Ray Data map (an actor per CPU) builds chunk after chunk,
    each call materializing a chunk's records and writing them to Parquet itself, sending back
    only rejects and counts. Memory is bounded by one chunk in the driver and a row group per
    actor, whatever the dataset's size; nothing big ever sits in the object store.
    """
    import ray

    _task_splits(cfg, sources)  # a task without a source fails here, before anything is removed
    _clear_records(out_dir)
    listing_dir = storage.join(out_dir, "_listing")
    paths = _write_listing(cfg, sources, listing_dir)
    if not paths:  # no task to build: nothing for Ray to do
        storage.filesystem(listing_dir)[0].rm(storage.filesystem(listing_dir)[1], recursive=True)
        return _finish(out_dir, cfg, [])
    n_cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    ds = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=len(paths)).map_batches(
        _ChunkBuilder,
        batch_size=None,  # one block = one chunk file = one call (and one Parquet file per split)
        batch_format="pyarrow",
        num_cpus=1,
        # An actor per CPU with the next chunk already queued: Ray Data notices a finished *task*
        # only on its next scheduling tick (up to 0.1 s, often two ticks), which idled each CPU
        # ~0.2 s per chunk with plain tasks; a queue of 2 keeps the tail to one chunk per actor.
        # min_size=1: where other work holds CPUs, the build starts with what it gets.
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=n_cpus, initial_size=n_cpus,
                                           max_tasks_in_flight_per_actor=2),
        fn_kwargs={
            "out_dir": out_dir,
            "seed": cfg.run.seed,
            "frames_per_video": cfg.data.frames_per_video,
            "max_image_pixels": cfg.data.max_image_pixels,
            "train_instructions": cfg.data.train_instructions,
        },
    )
    outcomes: list[dict] = []
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        outcomes += batch.to_pylist()
    stats = _finish(out_dir, cfg, outcomes)
    fs, p = storage.filesystem(listing_dir)
    fs.rm(p, recursive=True)
    return stats


def build_unified_local(cfg: YingConfig, sources: dict[str, str], out_dir: str) -> dict:
    """The same build as ``build_unified`` in this one process, without Ray: the same listing,
    chunk files and record functions, one chunk after another. Same outputs and counts; for
    debugging and as the benchmark's baseline."""
    _task_splits(cfg, sources)
    _clear_records(out_dir)
    listing_dir = storage.join(out_dir, "_listing")
    outcomes: list[dict] = []
    for path in _write_listing(cfg, sources, listing_dir):
        outcomes += _build_listing_files(pa.table({"path": [path]}), out_dir, cfg.run.seed,
                                         cfg.data.frames_per_video, cfg.data.max_image_pixels,
                                         cfg.data.train_instructions).to_pylist()
    stats = _finish(out_dir, cfg, outcomes)
    fs, p = storage.filesystem(listing_dir)
    fs.rm(p, recursive=True)
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
