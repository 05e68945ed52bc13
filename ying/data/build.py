"""Unify source datasets into instruction records with Ray, streaming, in two steps.

1. Listing: one Ray task (one CPU) per (task, split) runs the dataset's adapter, which streams its
   annotation files, and writes the split's instances into chunk files of ``data.chunk_rows`` rows
   (a video instance counts as ``data.frames_per_video`` rows: its frames are decoded and encoded
   again, so a chunk is about as much work whatever its task).
   With ``data.max_per_split`` the task keeps a seeded random sample (the bottom-k of a hash of
   seed, task, split and source id: the same sample whatever the file order, memory bounded by k).
2. Build: a Ray Data actor per CPU takes chunk after chunk: reads and checks the images (one full
   decode each), draws region boxes, samples video frames, picks instructions (one plain function
   per instance: ``materialize_record``, testable without Ray) and writes the chunk's records to
   Parquet itself, a row group at a time, emitting the built/rejected counters as it goes. Only
   rejects and counts come back to the driver, which prints one progress line. The biggest chunks
   go first, so the build ends on small ones and no CPU idles long waiting for the last.

Memory stays bounded whatever the dataset's size: one annotation entry (or the sample) per listing
task, a row group per actor, nothing big in the object store. Output, in the records layout that
``ying.data.records`` owns (and reads back: ``read_records``, ``read_split``, ``count_records``):

    <out_dir>/records/<split>/<task>-<split>-<index>.parquet   RECORD_SCHEMA rows, one file per chunk
    <out_dir>/rejects/rejects.jsonl   {task, split, source, reason}: adapter and build rejects

Records name their source file relative to the source root (``meta.source``), so the same inputs
give the same rows on any machine, and carry ``meta.image_sha256``, the digests of the image bytes
this build decoded, so QC need not decode them again. For every task and split,
listed = written + rejected (checked, not assumed): ``listed`` counts the listing's rows, the
adapter's instances kept and its rejects. ``read`` counts source records: the same number, except
where an adapter gives one record's instances a ``SourceInstance.group`` (a LLaVA conversation's
rounds), which is one record read.
"""

from __future__ import annotations

import hashlib
import heapq
import io
import json
import re
import warnings
from typing import TYPE_CHECKING, Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from .. import storage
from .instructions import pick_instruction
from .records import SplitFiles, clear_records, rejects_path
from .schema import REJECT_SCHEMA, SPLITS, Reject, SourceInstance, make_record_id
from .tasks import adapter_options, get_task
from .visual_prompt import draw_region_box

if TYPE_CHECKING:  # Ray workers import this module; they need no pydantic config classes
    from ..config import YingConfig

__all__ = [
    "check_image_bytes",
    "materialize_record",
    "sample_key",
    "list_split",
    "reject_kind",
    "build_unified",
    "build_unified_local",
    "build_chunk",
    "build_dataset_batch",
    "reads_dataset",
    "iter_listing",
]


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


def relative_source(source: str, root: str | None) -> str:
    """``source`` with the source root taken off every path in it ("<root>/a.json#x" -> "a.json#x")."""
    if not root:
        return source
    return source.replace(root.rstrip("/") + "/", "")


def materialize_record(
    instance_dict: dict[str, Any], seed: int, frames_per_video: int, max_image_pixels: int,
    train_instructions: int | None = None, source_root: str | None = None,
    image_bytes: list[bytes] | None = None,
) -> dict[str, Any]:
    """A SourceInstance (as a dict) -> a RECORD_SCHEMA row, or a REJECT_SCHEMA row with its reason.

    ``train_instructions``: training records draw from that many of their pool's instructions
    (paper Figure 5); evaluation records always draw from the whole pool. ``source_root``: the
    task's source root, taken off ``meta.source`` (rejects keep the full path, for the person who
    has to open the file). ``image_bytes``: the images' bytes where the adapter read them itself
    (members of an archive, which ``image_paths`` then only names); checked like files read here.
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
    if image_bytes is not None and len(image_bytes) != len(inst.image_paths):
        return reject(f"instance names {len(inst.image_paths)} images but carries {len(image_bytes)}")
    for k, path in enumerate(inst.image_paths):
        try:
            data = _read(path) if image_bytes is None else image_bytes[k]
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
    meta["source"] = relative_source(inst.source, source_root)
    # Every image stored here decoded fully above (or was encoded here): QC hashes the bytes anyway
    # for its contamination guard and skips the decode when they match.
    meta["image_sha256"] = [hashlib.sha256(b).hexdigest() for b in images]
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


# Listing rows: what a listing task writes into chunk files for the builders, one per source record
# kept: kind "instance" carries a SourceInstance as JSON, "reject" an adapter reject with its reason.
# ``index`` is the record's position in the adapter's stream (unique per task and split), ``root`` the
# task's source root (taken off meta.source), ``group`` the instance's SourceInstance.group ("" for
# none: the row is a source record of its own).
_LISTING_SCHEMA = pa.schema(
    [("kind", pa.string()), ("task", pa.string()), ("split", pa.string()), ("index", pa.int64()),
     ("root", pa.string()), ("instance", pa.string()), ("source", pa.string()), ("reason", pa.string()),
     ("group", pa.string())]
)
# What a build chunk reports back to the driver: rejects with their reasons and records written per
# task and split. Small whatever the chunk: images never travel back through the object store.
# ``listed``/``offered`` (null elsewhere): a dataset batch's tally row, the counts a listing gives for
# listed tasks (``build_dataset_batch``).
_OUTCOME_SCHEMA = pa.schema(
    [("task", pa.string()), ("split", pa.string()), ("index", pa.int64()), ("source", pa.string()),
     ("reason", pa.string()), ("written", pa.int64()), ("listed", pa.int64()), ("offered", pa.int64())]
)
# Parquet row groups are flushed at whichever limit comes first: memory per builder stays bounded
# by one row group, however big the chunk or the images.
_ROW_GROUP_ROWS = 256
_ROW_GROUP_BYTES = 32 * 1024 * 1024


def sample_key(seed: int, task: str, split: str, source_id: str) -> int:
    """Where a source record falls in the seeded random order that ``max_per_split`` samples from."""
    digest = hashlib.blake2b(f"{seed}\x00{task}\x00{split}\x00{source_id}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def iter_listing(task: str, root: str, split: str, cap: int | None = None, seed: int = 0,
                 tally: dict[str, int] | None = None,
                 options: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Listing rows of one task's split: its adapter's rejects as they come and its instances,
    all of them, or with ``cap`` a seeded random sample of ``cap`` (in source order, after the
    rejects). Parses annotations only; no image is opened.

    The sample is the ``cap`` instances with the smallest ``sample_key``: a heap of ``cap`` entries
    is all it holds, however long the split, and growing a release changes it only where the new
    records land. Adapter rejects are all kept (they say what is wrong with the source).
    ``tally`` (if given) gets ``offered``: the instances the sample was drawn from. ``options``: the
    adapter's keyword options (``tasks.adapter_options``).
    """
    adapter = get_task(task)
    offered = 0
    heap: list[tuple[int, int, dict]] = []  # (-key, -index, row): the largest key on top, evicted first

    def row(n: int) -> dict[str, Any]:
        return {"kind": "instance", "task": task, "split": split, "index": n, "root": root, "instance": "",
                "source": "", "reason": "", "group": ""}

    for n, item in enumerate(adapter.read_instances(root, split, **(options or {}))):
        r = row(n)
        if isinstance(item, Reject):
            r.update(kind="reject", source=item.source, reason=item.reason)
            yield r
            continue
        offered += 1
        r["group"] = item.group or ""
        if cap is None:
            # vars(), not dataclasses.asdict: asdict deep-copies every nested list, and cost a third
            # of the listing's time.
            r["instance"] = json.dumps(vars(item), ensure_ascii=False)
            yield r
            continue
        entry = (-sample_key(seed, task, split, item.source_id), -n)
        if len(heap) >= cap and (cap <= 0 or entry <= heap[0][:2]):
            continue  # not among the cap smallest keys: never serialized
        r["instance"] = json.dumps(vars(item), ensure_ascii=False)
        if len(heap) < cap:
            heapq.heappush(heap, (*entry, r))
        else:
            heapq.heapreplace(heap, (*entry, r))
    for _, _, r in sorted(heap, key=lambda e: -e[1]):  # the sample, in source order
        yield r
    if tally is not None:
        tally["offered"] = offered


def _row_weight(row: dict[str, Any], video_weight: int) -> int:
    """A listing row's share of a chunk: 1, or ``video_weight`` for a video instance."""
    if video_weight <= 1 or row["kind"] != "instance":
        return 1
    # The JSON is json.dumps(vars(SourceInstance)): a video's path is a non-empty string there, and
    # quotes inside values are escaped, so the key can't be matched by text (a parse per row costs more).
    text = row["instance"]
    return video_weight if '"video_path": "' in text and '"video_path": ""' not in text else 1


def list_split(task: str, root: str, split: str, cap: int | None, seed: int, listing_dir: str,
               chunk_rows: int, options: dict[str, Any] | None = None, video_weight: int = 1) -> dict[str, Any]:
    """Write one task's split as listing chunk files of ``chunk_rows`` rows under
    ``<listing_dir>/<task>--<split>/``; returns ``{task, split, paths, weights, read, listed, offered}``
    (``listed``: rows listed, i.e. instances kept plus adapter rejects; ``read``: the source records
    among them, a group's rows, which come one after another, being one; ``weights``: each chunk's
    rows, a video instance counting ``video_weight``). The unit of work of the listing step (a Ray
    task in ``build_unified``).

    A video instance counts as ``video_weight`` rows toward ``chunk_rows`` (the build passes
    ``data.frames_per_video``): sampling a video decodes and encodes each frame, so a chunk of 256
    videos was a single call of ~frames_per_video times a chunk of images' work, which one actor
    then ran alone at the end of the build while the other CPUs idled."""
    base = storage.join(listing_dir, f"{task}--{split}")
    fs, p = storage.filesystem(base)
    fs.makedirs(p, exist_ok=True)
    paths: list[str] = []
    weights: list[int] = []
    tally: dict[str, int] = {}
    read = listed = 0
    group = ""

    def flush(rows: list[dict], weight: int) -> None:
        path = storage.join(base, f"chunk-{len(paths):07d}.parquet")
        cfs, cp = storage.filesystem(path)
        with cfs.open(cp, "wb") as f:
            pq.write_table(pa.Table.from_pylist(rows, schema=_LISTING_SCHEMA), f, compression="zstd")
        paths.append(path)
        weights.append(weight)

    chunk: list[dict] = []
    weight = 0
    for r in iter_listing(task, root, split, cap, seed, tally, options):
        chunk.append(r)
        weight += _row_weight(r, video_weight)
        listed += 1
        if not r["group"] or r["group"] != group:
            read += 1  # a row of its own, or the first of its group
        group = r["group"]
        if weight >= chunk_rows:
            flush(chunk, weight)
            chunk, weight = [], 0
    if chunk:
        flush(chunk, weight)
    return {"task": task, "split": split, "paths": paths, "weights": weights, "read": read, "listed": listed,
            "offered": tally.get("offered", 0)}


_PATHLIKE = re.compile(r"\S*[/\\]\S*")


def reject_kind(reason: str) -> str:
    """A short, low-cardinality name for a reject reason (a metric tag): the reason's head with
    paths and numbers taken out. "/d/x.jpg: image does not decode: ..." -> "image does not decode"."""
    head, sep, rest = reason.partition(": ")
    if sep and _PATHLIKE.fullmatch(head):
        head = rest.partition(": ")[0]
    head = _PATHLIKE.sub("<path>", head.split(":")[0])
    return re.sub(r"\d+", "N", head).strip()[:48] or "other"


class _SplitWriters:
    """One Parquet file per split for one chunk, written a row group at a time."""

    def __init__(self, out_dir: str, file_name: str):
        self.files = SplitFiles(out_dir, file_name)
        self.pending: dict[str, list[dict]] = {}
        self.pending_bytes: dict[str, int] = {}
        self.written: dict[tuple[str, str], int] = {}

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
        if rows:
            self.files.write(split, rows)

    def close(self) -> None:
        for split in list(self.pending):
            self._flush(split)
        self.files.close()


def build_chunk(
    rows: list[dict[str, Any]], out_dir: str, seed: int, frames_per_video: int, max_image_pixels: int,
    train_instructions: int | None = None, file_name: str | None = None,
) -> list[dict[str, Any]]:
    """Materialize a chunk of listing rows and write its records straight to
    ``<out_dir>/records/<split>/<task>-<split>-<index>.parquet`` (named by the chunk's first row, so
    a retried task overwrites its own file instead of adding a duplicate; or ``file_name``). Returns
    outcome rows: rejects with their reasons, records written per task and split, and read counts.
    A row's ``images`` (dataset rows) are its instance's image bytes. The unit of work of all builds."""
    if not rows:
        return []
    first = rows[0]
    writers = _SplitWriters(out_dir, file_name or f"{first['task']}-{first['split']}-{first['index']:09d}.parquet")
    outcomes: list[dict[str, Any]] = []

    def outcome(row: dict, source: str = "", reason: str = "", written: int = 0) -> dict:
        return {"task": row["task"], "split": row["split"], "index": row["index"], "source": source,
                "reason": reason, "written": written}

    try:
        for row in rows:
            if row["kind"] == "reject":
                outcomes.append(outcome(row, source=row["source"], reason=row["reason"]))
                continue
            inst = json.loads(row["instance"])
            try:
                out = materialize_record(inst, seed, frames_per_video, max_image_pixels, train_instructions,
                                         source_root=row.get("root"), image_bytes=row.get("images"))
            except Exception as e:  # one broken instance (or an adapter's bug) must not kill the run
                out = {"source": inst.get("source", ""), "reason": f"build failed: {type(e).__name__}: {e}"}
            if "reason" in out:
                outcomes.append(outcome(row, source=out["source"], reason=out["reason"]))
            else:
                writers.add(out)
    finally:
        writers.close()
    outcomes += [{"task": t, "split": s, "index": first["index"], "source": "", "reason": "", "written": n}
                 for (t, s), n in writers.written.items()]
    return outcomes


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


def _emit_metrics(outcomes: pa.Table) -> None:
    """This chunk's records built and rejected, as Ray counters (telemetry.py), tagged by task
    (and the reject's kind, paths and numbers taken out so the tag stays low-cardinality)."""
    from .. import telemetry

    written: dict[str, int] = {}
    rejected: dict[tuple[str, str], int] = {}
    for o in outcomes.to_pylist():
        if o["reason"]:
            key = (o["task"], reject_kind(o["reason"]))
            rejected[key] = rejected.get(key, 0) + 1
        elif o["written"]:
            written[o["task"]] = written.get(o["task"], 0) + o["written"]
    for task, n in written.items():
        telemetry.records_counter().inc(n, tags={"task": task})
    for (task, kind), n in rejected.items():
        telemetry.records_rejected_counter().inc(n, tags={"task": task, "reason": kind})


class _ChunkBuilder:
    """Ray Data actor around ``_build_listing_files``: imports once, then builds chunk after chunk,
    counting each chunk's records in the pipeline's metrics as it ends. Its arguments come per call
    (no constructor arguments to keep alive in the object store)."""

    def __call__(self, batch: pa.Table, **kwargs: Any) -> pa.Table:
        outcomes = _build_listing_files(batch, **kwargs)
        _emit_metrics(outcomes)
        return outcomes


# Dataset tasks: a source whose images live inside archives (LAION's webdataset shards) can't be
# listed as paths. Its adapter has ``read_dataset(root, split) -> ray.data.Dataset`` with
# rows {source, reason, instance, images}: an adapter reject where ``reason`` is set, else a
# SourceInstance as JSON (``image_paths`` naming the images) and its image bytes. The build runs each
# batch through ``build_chunk`` in the read's own task (fused by Ray Data: the bytes never enter the
# object store), with the same record functions, writers, counters and rejects as listed tasks.


def reads_dataset(task: str) -> bool:
    """Whether ``task``'s adapter is read as a Ray Dataset (``read_dataset``) rather than listed."""
    return callable(getattr(get_task(task), "read_dataset", None))


def _dataset_file_name(task: str, split: str, source: str, root: str) -> str:
    """A batch's records file, named by its first row's source ("laion-train-00000.tar-000000003.parquet"):
    batches come from the shards alone (one read task per shard), so a rebuild names them alike."""
    return f"{task}-{split}-{re.sub(r'[^A-Za-z0-9_.-]+', '-', relative_source(source, root)).strip('-')}.parquet"


def build_dataset_batch(
    rows: list[dict[str, Any]], task: str, split: str, root: str, out_dir: str, seed: int, frames_per_video: int,
    max_image_pixels: int, train_instructions: int | None = None, keep: set[str] | frozenset | None = None,
) -> list[dict[str, Any]]:
    """Build a batch of a dataset task's rows (see above) as ``build_chunk`` builds listing rows;
    ``keep``: the source ids ``data.max_per_split`` sampled (None: all). Returns ``build_chunk``'s
    outcome rows and a tally row: ``listed`` (rows built: instances kept and rejects) and ``offered``
    (instances given)."""
    listed: list[dict[str, Any]] = []
    offered = 0
    for r in rows:
        row = {"kind": "reject" if r["reason"] else "instance", "task": task, "split": split, "index": 0,
               "root": root, "instance": r["instance"], "source": r["source"], "reason": r["reason"]}
        if not r["reason"]:
            offered += 1
            if keep is not None and json.loads(r["instance"])["source_id"] not in keep:
                continue
            row["images"] = r["images"]
        listed.append(row)
    name = _dataset_file_name(task, split, listed[0]["source"], root) if listed else None
    outcomes = build_chunk(listed, out_dir, seed, frames_per_video, max_image_pixels, train_instructions,
                           file_name=name)
    return outcomes + [{"task": task, "split": split, "index": 0, "source": "", "reason": "", "written": 0,
                        "listed": len(listed), "offered": offered}]


def _build_dataset_rows(batch: pa.Table, **kwargs: Any) -> pa.Table:
    """Ray Data wrapper around ``build_dataset_batch``: dataset rows in, outcome rows out."""
    outcomes = pa.Table.from_pylist(build_dataset_batch(batch.to_pylist(), **kwargs), schema=_OUTCOME_SCHEMA)
    _emit_metrics(outcomes)
    return outcomes


def _smallest_sample_keys(batch: pa.Table, task: str, split: str, seed: int, cap: int) -> pa.Table:
    """The batch's ``cap`` instances with the smallest ``sample_key``: its part of the seeded sample."""
    keyed = [(sample_key(seed, task, split, sid), sid) for sid in
             (json.loads(i)["source_id"] for i, why in zip(batch.column("instance").to_pylist(),
                                                            batch.column("reason").to_pylist()) if not why)]
    best = heapq.nsmallest(cap, keyed)
    return pa.table({"key": pa.array([k for k, _ in best], pa.uint64()), "source_id": [s for _, s in best]})


def _dataset_sample(ds: Any, task: str, split: str, cap: int, seed: int) -> frozenset[str]:
    """The source ids of ``data.max_per_split``'s sample of a dataset task: the ``cap`` smallest
    ``sample_key``, as ``iter_listing`` draws for listed tasks. A first pass over the source (each
    batch sends back at most ``cap`` ids; the images stay in the read tasks)."""
    keys = ds.map_batches(_smallest_sample_keys, batch_size=None, batch_format="pyarrow", num_cpus=1,
                          fn_kwargs={"task": task, "split": split, "seed": seed, "cap": cap})
    best = heapq.nsmallest(cap, ((r["key"], r["source_id"]) for r in keys.iter_rows()))
    return frozenset(sid for _, sid in best)


def _build_dataset_split(cfg: YingConfig, w: dict[str, str], out_dir: str) -> tuple[dict, list[dict]]:
    """Build one dataset task's split: its listing-like counts (``{task, split, read, listed, offered}``:
    a sample is one source record) and its outcome rows."""
    from ..progress import ProgressLine

    task, root, split = w["task"], w["root"], w["split"]
    ds = get_task(task).read_dataset(root, split)
    cap = cfg.data.max_per_split
    keep = None if cap is None else _dataset_sample(ds, task, split, cap, cfg.run.seed)
    built = ds.map_batches(
        _build_dataset_rows, batch_size=None, batch_format="pyarrow", num_cpus=1, concurrency=cfg.data.workers,
        fn_kwargs={"task": task, "split": split, "root": root, "keep": keep, **_build_kwargs(cfg, out_dir)})
    counts = {"task": task, "split": split, "read": 0, "listed": 0, "offered": 0}
    outcomes: list[dict] = []
    rejected = 0
    line = ProgressLine(f"unify: {task}/{split}", total=None, unit="records",
                        interval_s=cfg.data.progress_interval_s, extra=lambda: f"{rejected:,} rejected")
    for batch in built.iter_batches(batch_size=None, batch_format="pyarrow"):
        for o in batch.to_pylist():
            if o["listed"] is not None:  # the batch's tally
                counts["listed"] += o["listed"]
                counts["offered"] += o["offered"]
                continue
            outcomes.append(o)
            rejected += bool(o["reason"])
            line.update(o["written"] + bool(o["reason"]))
    line.finish()
    counts["read"] = counts["listed"]
    return counts, outcomes


def _task_splits(cfg: YingConfig, sources: dict[str, str]) -> list[dict[str, str]]:
    """Every (task, root, split) to read, in config order; fails early on a task without a source."""
    out = []
    for task in cfg.data.tasks:
        if task not in sources:
            raise ValueError(f"no source root for task {task!r}; got roots for {sorted(sources)}")
        out += [{"task": task, "root": sources[task], "split": s} for s in get_task(task).SPEC.splits]
    return out


def _fresh_dir(path: str) -> None:
    fs, p = storage.filesystem(path)
    if fs.exists(p):
        fs.rm(p, recursive=True)
    fs.makedirs(p, exist_ok=True)


def _remove(path: str) -> None:
    fs, p = storage.filesystem(path)
    if fs.exists(p):
        fs.rm(p, recursive=True)


def _listing_args(cfg: YingConfig, w: dict[str, str], listing_dir: str) -> tuple:
    return (w["task"], w["root"], w["split"], cfg.data.max_per_split, cfg.run.seed, listing_dir, cfg.data.chunk_rows,
            adapter_options(w["task"], cfg.data), cfg.data.frames_per_video)


def _build_kwargs(cfg: YingConfig, out_dir: str) -> dict[str, Any]:
    return {"out_dir": out_dir, "seed": cfg.run.seed, "frames_per_video": cfg.data.frames_per_video,
            "max_image_pixels": cfg.data.max_image_pixels, "train_instructions": cfg.data.train_instructions}


def _finish(out_dir: str, cfg: YingConfig, listings: list[dict], outcomes: list[dict]) -> dict:
    """Fold the listings' counts and the chunks' outcomes into ``{task: {split: {read, listed,
    written, rejected, offered}}}``, check listed = written + rejected (every row listed ends as a
    record or a reject), and write rejects.jsonl (in task, split and source order, whatever order
    chunks ended)."""
    stats = {t: {s: {"read": 0, "listed": 0, "written": 0, "rejected": 0, "offered": 0}
                 for s in get_task(t).SPEC.splits} for t in cfg.data.tasks}
    for listing in listings:
        c = stats[listing["task"]][listing["split"]]
        c["read"] += listing["read"]
        c["listed"] += listing["listed"]
        c["offered"] += listing["offered"]
    task_order = {t: i for i, t in enumerate(cfg.data.tasks)}
    split_order = {s: i for i, s in enumerate(SPLITS)}
    rejects: list[Reject] = []
    # (source: dataset rows carry no stream index; their rejects go in source order)
    for o in sorted(outcomes, key=lambda o: (task_order[o["task"]], split_order[o["split"]], o["index"], o["source"])):
        c = stats[o["task"]][o["split"]]
        c["written"] += o["written"]
        if o["reason"]:
            rejects.append(Reject(o["task"], o["split"], o["source"], o["reason"]))
            c["rejected"] += 1
    bad = {f"{t}/{s}": c for t, splits in stats.items() for s, c in splits.items()
           if c["listed"] != c["written"] + c["rejected"]}
    if bad:  # a lost or duplicated chunk; never report counts that don't add up
        raise RuntimeError(f"build counts don't reconcile (listed != written + rejected): {bad}")
    lines = "".join(json.dumps(r.to_row(), ensure_ascii=False) + "\n" for r in rejects)
    storage.write_bytes_atomic(rejects_path(out_dir), lines.encode("utf-8"))
    return stats


def build_unified(cfg: YingConfig, sources: dict[str, str], out_dir: str) -> dict:
    """Build every task in ``cfg.data.tasks`` from ``sources`` (task -> root); returns
    ``{task: {split: {read, listed, written, rejected, offered}}}`` (``read``: source records, a
    LLaVA conversation one however many rounds it gives; ``listed`` = written + rejected: instances
    kept plus adapter rejects; ``offered``: the instances the adapter gave, which
    ``data.max_per_split`` samples from).

    Listing runs as one Ray task (one CPU) per (task, split), all at once where CPUs allow; then one
    Ray Data map (an actor per CPU, or ``data.workers``) builds chunk after chunk, each call
    writing its records to Parquet itself and sending back only rejects and counts. The driver
    (the stage's own 0-CPU task) only folds counts and prints progress. Dataset tasks (an adapter
    with ``read_dataset``: LAION's shards) follow, each a Ray Dataset whose read tasks build too.
    """
    import ray

    from ..progress import ProgressLine

    work = _task_splits(cfg, sources)  # a task without a source fails here, before anything is removed
    clear_records(out_dir)  # a rebuild replaces, never mixes with, old shards
    listing_dir = storage.join(out_dir, "_listing")
    _fresh_dir(listing_dir)
    datasets = [w for w in work if reads_dataset(w["task"])]  # read as Ray Datasets, after the listed ones
    work = [w for w in work if not reads_dataset(w["task"])]
    list_task = ray.remote(num_cpus=1)(list_split)
    pending = {list_task.remote(*_listing_args(cfg, w, listing_dir)): i for i, w in enumerate(work)}
    listed = ProgressLine("unify: listing", total=len(work), unit="task splits",
                          interval_s=cfg.data.progress_interval_s)
    results: dict[int, dict] = {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        results[pending.pop(done[0])] = ray.get(done[0])
        listed.update(1)
    listed.finish()
    listings = [results[i] for i in range(len(work))]
    # Heaviest chunks first (a stable sort: listing order among equals): a split's last, partial
    # chunk comes at the end, so the build's tail is a small chunk, not a full one started last.
    # Outputs don't depend on the order: files are named by their chunk, rejects sorted in _finish.
    chunks = [(w, p) for listing in listings for w, p in zip(listing["weights"], listing["paths"])]
    paths = [p for _, p in sorted(chunks, key=lambda c: -c[0])]
    outcomes: list[dict] = []
    if paths:
        n_cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        actors = max(1, min(cfg.data.workers or n_cpus, len(paths)))
        ds = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=len(paths)).map_batches(
            _ChunkBuilder,
            batch_size=None,  # one block = one chunk file = one call (and one Parquet file per split)
            batch_format="pyarrow",
            num_cpus=1,
            # An actor per CPU with the next chunk already queued: Ray Data notices a finished *task*
            # only on its next scheduling tick (up to 0.1 s, often two ticks), which idled each CPU
            # ~0.2 s per chunk with plain tasks; a queue of 2 keeps the tail to one chunk per actor.
            # min_size=1: where other work holds CPUs, the build starts with what it gets.
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors, initial_size=actors,
                                               max_tasks_in_flight_per_actor=2),
            fn_kwargs=_build_kwargs(cfg, out_dir),
        )
        rejected = 0
        line = ProgressLine("unify", total=sum(listing["listed"] for listing in listings), unit="records",
                            interval_s=cfg.data.progress_interval_s, extra=lambda: f"{rejected:,} rejected")
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            rows = batch.to_pylist()
            outcomes += rows
            n_rejected = sum(1 for o in rows if o["reason"])
            rejected += n_rejected
            line.update(sum(o["written"] for o in rows) + n_rejected)
        line.finish()
    for w in datasets:
        counts, dataset_outcomes = _build_dataset_split(cfg, w, out_dir)
        listings.append(counts)
        outcomes += dataset_outcomes
    stats = _finish(out_dir, cfg, listings, outcomes)
    _remove(listing_dir)
    return stats


def build_unified_local(cfg: YingConfig, sources: dict[str, str], out_dir: str) -> dict:
    """The same build as ``build_unified`` in this one process, without Ray: the same listing,
    chunk files and record functions, one after another. Same outputs and counts; for debugging
    and as the benchmark's baseline."""
    work = _task_splits(cfg, sources)
    clear_records(out_dir)  # a rebuild replaces, never mixes with, old shards
    listing_dir = storage.join(out_dir, "_listing")
    _fresh_dir(listing_dir)
    listings = [list_split(*_listing_args(cfg, w, listing_dir)) for w in work]
    outcomes: list[dict] = []
    for path in (p for listing in listings for p in listing["paths"]):
        outcomes += _build_listing_files(pa.table({"path": [path]}), **_build_kwargs(cfg, out_dir)).to_pylist()
    stats = _finish(out_dir, cfg, listings, outcomes)
    _remove(listing_dir)
    return stats


_ = REJECT_SCHEMA  # rejects follow REJECT_SCHEMA's columns, stored as JSONL
