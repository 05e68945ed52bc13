"""Reading and encoding a stage's records for its training workers (Ray Data on CPU workers).

    read_footer      one file's Parquet footer in one exact read (two when its size is unknown),
                     instead of pyarrow's 64 KiB speculative read of the file's tail
    stage_footers    the footers of the files holding the stage's tasks (row-group statistics of the
                     ``task`` column): Stage I reads a VQA file's footer only, never its rows
    stage_files      the same, as paths
    select_ids       seeded choices from text columns only (no image bytes): the validation sample,
                     stratified across the stage's tasks, and per-task caps for the ablations
    read_stage_rows  one file's rows of the stage, from a given stage row on (row groups before it
                     skipped from their id/task columns, image columns read only where needed);
                     every byte it reads, the footer included, is read once
    EncodeRecords    rows in, encoded training examples out: images decoded and resized (uint8),
                     text tokenized, labels masked; an ablation's record policy (k instructions per
                     task drawn at random from the pool; raw instead of rephrased answers) applied
    encoded_rows     a rank's segments (``ying.train.sampler``) read and encoded by Ray Data tasks,
                     in order (``preserve_order``): the worker's record stream
    ReadAhead        a record stream started on a thread before it is needed (the first epoch while
                     the model and DeepSpeed are set up, the next one while this one trains), so a
                     step never waits on Ray Data starting and reading a shuffle window

Which records a rank reads, and in which order, is ``ying.train.sampler``'s business; this module
only reads what it is asked to, in the order asked.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from ying import storage
from ying.data.records import list_files

__all__ = [
    "RecordPolicy",
    "ReadAhead",
    "read_footer",
    "stage_footers",
    "stage_files",
    "rows_of_tasks",
    "select_ids",
    "EncodeRecords",
    "encode_segments",
    "encoded_rows",
    "collate_rows",
    "instruction_draw",
    "IngestOptions",
    "read_stage_rows",
    "TRAIN_COLUMNS",
    "UNSEEN_FROM",
]

TRAIN_COLUMNS = ["id", "task", "images", "instruction", "inputs", "outputs"]


@dataclass(frozen=True)
class RecordPolicy:
    """How a stage's training records are shown to the model (the ablations change these).

    ``instructions_per_task``: each record's instruction is redrawn (by seed and record id) from
    k instructions of its task's pool, drawn at random by seed (paper Figure 9; ``instruction_draw``);
    None keeps the built instruction.
    ``answers``: "outputs" trains on the records' outputs (rephrased where the task rephrases);
    "original" on ``meta.original_answer``, the source's short answer (Table 5's "Len" column).
    ``max_per_task``: at most this many training records per task, chosen by seed (paper
    Appendix I: 5k per task in the task-count study); None: all.
    """

    instructions_per_task: int | None = None
    answers: str = "outputs"
    max_per_task: int | None = None

    def columns(self) -> list[str]:
        return TRAIN_COLUMNS + (["meta"] if self.answers == "original" else [])


_MAGIC = b"PAR1"


def read_footer(fh, footer_size: int | None = None):
    """``(pyarrow FileMetaData, bytes of the footer's tail read)`` of an open Parquet file.

    pyarrow reads a footer by fetching the file's last 64 KiB on the chance the footer fits: on
    files of a few hundred KiB that is a quarter of the file read for a 7 KiB footer, and it was
    read again for every open. Here the tail (footer, its length and the magic) is read exactly:
    one read when ``footer_size`` (a ``RecordIndex`` carries it) is known, else the 8-byte length
    first. The metadata is then handed to ``pq.ParquetFile(fh, metadata=...)``, which reads no footer.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    end = fh.seek(0, 2)
    known = footer_size is not None and footer_size + 4 <= end
    if not known:
        fh.seek(end - 8)
        tail = fh.read(8)
        if len(tail) != 8 or tail[4:] != _MAGIC:  # not plain Parquet (encrypted, cut): let pyarrow say why
            fh.seek(0)
            return pq.ParquetFile(fh).metadata, None
        footer_size = int.from_bytes(tail[:4], "little") + 8
    fh.seek(end - footer_size)
    raw = fh.read(footer_size)
    if len(raw) != footer_size or raw[-4:] != _MAGIC or int.from_bytes(raw[-8:-4], "little") + 8 != footer_size:
        if known:  # the file changed since the index was built: read its length first
            return read_footer(fh)
        fh.seek(0)
        return pq.ParquetFile(fh).metadata, None
    # The footer parsed from a buffer laid out as a file (magic, footer, length, magic): offsets in
    # it still point into the real file, which is what ParquetFile(fh, metadata=...) reads.
    return pq.read_metadata(pa.BufferReader(_MAGIC + raw)), footer_size


def _task_column(meta) -> int | None:
    names = meta.schema.names
    return names.index("task") if "task" in names else None


def _may_hold(stats, tasks) -> bool:
    """A row group may hold rows of ``tasks`` (True when its ``task`` statistics can't tell)."""
    return stats is None or not stats.has_min_max or any(stats.min <= t <= stats.max for t in tasks)


def rows_of_tasks(meta, i: int, tasks) -> bool:
    """Every row of row group ``i`` belongs to ``tasks``, from its statistics alone (one task, no nulls)."""
    column = _task_column(meta)
    if column is None:
        return False
    stats = meta.row_group(i).column(column).statistics
    return (stats is not None and stats.has_min_max and stats.has_null_count and stats.null_count == 0
            and stats.min == stats.max and stats.min in tasks)


def stage_footers(data_dir: str, split: str, tasks: list[str],
                  filesystem=None) -> tuple[Any, list[tuple[str, Any, int | None]]]:
    """(fsspec filesystem, ``(file, FileMetaData, footer size)`` of the files of ``split`` that may hold
    rows of ``tasks``): each footer read once, exactly (``read_footer``).

    A file is kept when a row group's ``task`` statistics overlap the stage's tasks (or a row group
    has no statistics). Writers that keep a task per row group make this exact. ``filesystem``
    replaces the split's own (benchmarks count the bytes read through theirs).
    """
    fs, files = list_files(data_dir, split)
    if filesystem is not None:
        fs = filesystem
    wanted = sorted(set(tasks))
    keep = []
    for f in files:
        with fs.open(f, "rb") as fh:
            meta, size = read_footer(fh)
        column = _task_column(meta)
        if any(_may_hold(meta.row_group(i).column(column).statistics if column is not None else None, wanted)
               for i in range(meta.num_row_groups)):
            keep.append((f, meta, size))
    return fs, keep


def stage_files(data_dir: str, split: str, tasks: list[str]) -> tuple[Any, list[str]]:
    """(fsspec filesystem, files) of ``split`` that may hold rows of ``tasks`` (``stage_footers``)."""
    fs, footers = stage_footers(data_dir, split, tasks)
    return fs, [f for f, _, _ in footers]


def _rank_key(seed: int, record_id: str) -> bytes:
    return hashlib.sha256(f"{seed}\x00{record_id}".encode("utf-8")).digest()


def select_ids(data_dir: str, split: str, tasks: list[str], per_task: int, seed: int) -> dict[str, list[str]]:
    """Up to ``per_task`` record ids per task, chosen by a seeded hash; reads the id and task columns only."""
    import pyarrow.parquet as pq

    fs, footers = stage_footers(data_dir, split, tasks)
    wanted = set(tasks)
    ranked: dict[str, list[tuple[bytes, str]]] = {t: [] for t in tasks}
    for f, meta, _ in footers:
        with fs.open(f, "rb") as fh:  # the footer stage_footers read, not a second read of it
            table = pq.ParquetFile(fh, metadata=meta).read(columns=["id", "task"])
        for record_id, task in zip(table.column("id").to_pylist(), table.column("task").to_pylist()):
            if task in wanted:
                ranked[task].append((_rank_key(seed, record_id), record_id))
    return {t: [rid for _, rid in sorted(rows)[:per_task]] for t, rows in ranked.items()}


def read_stage_rows(fs, path: str, columns: list[str], tasks: set[str], ids: set[str] | None,
                    batch_rows: int = 64, skip: int = 0, limit: int | None = None,
                    footer_size: int | None = None) -> Iterator:
    """Rows of the stage's tasks (and chosen ids) from one Parquet file, ``batch_rows`` at a time:
    the stage's rows ``skip`` to ``skip + limit`` of the file, in file order.

    Row groups whose ``task`` statistics exclude the stage are skipped unread. A row group that
    statistics show to hold the stage's task only (and no id choice) is read in one go; in the
    rest the ``id`` and ``task`` columns are read first, and the other columns (the images) only for
    row groups that hold a wanted row past ``skip``, without reading id and task again. The footer
    is read once (``read_footer``; ``footer_size`` from the ``RecordIndex`` makes it one exact read).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    wanted_tasks = pa.array(sorted(tasks))
    wanted_ids = pa.array(sorted(ids)) if ids is not None else None
    keys = ["id", "task"]
    rest = [c for c in columns if c not in keys]
    with fs.open(path, "rb") as fh:
        meta, _ = read_footer(fh, footer_size)
        pf = pq.ParquetFile(fh, metadata=meta)
        task_col = _task_column(meta)
        for i in range(pf.num_row_groups):
            stats = meta.row_group(i).column(task_col).statistics
            if not _may_hold(stats, tasks):
                continue
            if ids is None and rows_of_tasks(meta, i, tasks):
                n = meta.row_group(i).num_rows
                if n <= skip:
                    skip -= n
                    continue
                rows = pf.read_row_group(i, columns=columns).slice(skip)
            else:
                key_table = pf.read_row_group(i, columns=keys)
                mask = pc.is_in(key_table.column("task"), value_set=wanted_tasks)
                if wanted_ids is not None:
                    mask = pc.and_(mask, pc.is_in(key_table.column("id"), value_set=wanted_ids))
                wanted = int(pc.sum(mask).as_py() or 0)
                if wanted <= skip:
                    skip -= wanted
                    continue
                rows = key_table
                if rest:
                    body = pf.read_row_group(i, columns=rest)
                    for name in rest:
                        rows = rows.append_column(body.schema.field(name), body.column(name))
                rows = rows.select(columns).filter(mask).slice(skip)
            skip = 0
            if limit is not None:
                rows = rows.slice(0, limit)
                limit -= rows.num_rows
            for start in range(0, rows.num_rows, batch_rows):
                yield rows.slice(start, batch_rows)
            if limit is not None and limit <= 0:
                return


class EncodeRecords:
    """Segments of Parquet files in, encoded training examples out (the CPU half of preprocessing).

    Each call takes segments (file, first stage row, row count), reads them with
    ``read_stage_rows`` and yields batches of token ids, labels and uint8 pixels as it goes, so a
    large file never sits in memory whole. The record policy of an ablation is applied here.
    """

    def __init__(self, processor, policy: RecordPolicy, seed: int, index, filesystem=None):
        from ying import storage

        self.processor = processor
        self.policy = policy
        self.seed = seed
        self.index = index
        self.tasks = set(index.tasks)
        self.ids = set(index.ids) if index.ids is not None else None
        self.fs, self.root = storage.filesystem(index.split_dir)
        if filesystem is not None:  # benchmarks count the bytes read through their own filesystem
            self.fs = filesystem
        self._pools: dict[str, list[str]] = {}

    def _instruction(self, task: str, record_id: str, built: str) -> str:
        k = self.policy.instructions_per_task
        if not k:
            return built
        if task not in self._pools:
            self._pools[task] = instruction_draw(task, k, self.seed)
        pool = self._pools[task]
        return pool[int.from_bytes(_rank_key(self.seed, record_id)[:8], "big") % len(pool)]

    def _answer(self, row: dict) -> str:
        if self.policy.answers == "original":
            original = json.loads(row.get("meta") or "{}").get("original_answer")
            if isinstance(original, str) and original.strip():
                return original
        return row["outputs"]

    def encode(self, table) -> dict[str, np.ndarray]:
        ids, labels, pixels, n_images, record_ids = [], [], [], [], []
        for row in table.to_pylist():
            record = {
                "images": row["images"],
                "instruction": self._instruction(row["task"], row["id"], row["instruction"]),
                "inputs": row["inputs"],
                "outputs": self._answer(row),
            }
            encoded = self.processor.encode_train_arrays(record)
            ids.append(encoded["input_ids"])
            labels.append(encoded["labels"])
            pixels.append(encoded["pixels"].tobytes())
            n_images.append(encoded["pixels"].shape[0])
            record_ids.append(row["id"])
        return {
            "id": np.asarray(record_ids, dtype=object),
            "input_ids": _object_array(ids),
            "labels": _object_array(labels),
            "pixels": np.asarray(pixels, dtype=object),
            "n_images": np.asarray(n_images, dtype=np.int32),
        }

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        for f, start, count in zip(batch["file"], batch["start"], batch["count"]):
            path = f"{self.root.rstrip('/')}/{self.index.files[int(f)]}"
            for table in read_stage_rows(self.fs, path, self.policy.columns(), self.tasks, self.ids,
                                         skip=int(start), limit=int(count),
                                         footer_size=self.index.footer_size(int(f))):
                yield self.encode(table)


# Figure 9's unseen instructions: a k <= UNSEEN_FROM draw never takes an instruction past this one.
UNSEEN_FROM = 8


def instruction_draw(task: str, k: int, seed: int) -> list[str]:
    """The k instructions of ``task``'s pool a Figure 9 trial trains on, drawn at random by seed as
    the paper does: from the first ``UNSEEN_FROM`` when k <= UNSEEN_FROM (the rest stay unseen for
    the evaluation), else from the whole pool."""
    import random

    from ying.data.instructions import load_pool

    pool = load_pool(task)
    candidates = pool[:UNSEEN_FROM] if k <= UNSEEN_FROM else pool
    return random.Random(f"instructions/{seed}/{task}").sample(candidates, min(k, len(candidates)))


def encode_segments(batch: dict[str, np.ndarray], *, processor, policy: RecordPolicy, seed: int, index,
                    filesystem=None) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data task: ``EncodeRecords`` over a batch of segments (one segment: building it is cheap)."""
    yield from EncodeRecords(processor, policy, seed, index, filesystem)(batch)


def _object_array(items: list[np.ndarray]) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


@dataclass(frozen=True)
class IngestOptions:
    """How a worker's Ray Data reads run: concurrent tasks, CPUs each, a CPU cap, batches ahead."""

    tasks: int = 1
    task_cpus: float = 1.0
    cpu_limit: float | None = None
    prefetch_batches: int = 4
    read_ahead: bool = True  # the next epoch and the validation sample, while this epoch trains


def encoded_rows(segments, index, processor, policy: RecordPolicy, seed: int, options: IngestOptions,
                 filesystem=None) -> Iterator[dict]:
    """The encoded rows of ``segments``, in order: Ray Data tasks read and encode them on CPU
    workers, ``preserve_order`` keeps their order whatever task finishes first."""
    if not segments:
        return
    import ray.data
    from ray.data import DataContext, ExecutionResources

    ctx = DataContext.get_current()
    ctx.execution_options.preserve_order = True  # the sampler's order, not the order tasks finish in
    if options.cpu_limit:
        ctx.execution_options.resource_limits = ExecutionResources(cpu=options.cpu_limit)
    items = [{"file": s.file, "start": s.start, "count": s.count} for s in segments]
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        encode_segments,
        fn_kwargs={"processor": processor, "policy": policy, "seed": seed, "index": index, "filesystem": filesystem},
        batch_size=1,  # one segment per call; the task yields encoded batches as it reads
        compute=ray.data.TaskPoolStrategy(size=max(1, options.tasks)),
        num_cpus=options.task_cpus,
    )
    for block in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=options.prefetch_batches):
        columns = list(block)
        for i in range(len(block["id"])):
            yield {c: block[c][i] for c in columns}


class ReadAhead:
    """The rows of ``make()``, its first row fetched on a daemon thread from the moment this is made.

    A rank's records wait for a whole shuffle window (``ying.train.sampler``: with the tiny preset's
    window, the rank's whole epoch) and, in a fresh process, for Ray Data's first task to start: about
    10 s of an epoch's first step on 2 CPUs. Made early, that wait overlaps other work. The rows are
    those ``make()`` yields, in its order: read ahead or not, training sees the same records. An
    error on the thread is raised to whoever iterates.
    """

    _END = object()

    def __init__(self, make: Callable[[], Iterator[dict]], name: str = "ying-read-ahead"):
        self._rows: Iterator[dict] | None = None
        self._first: Any = self._END
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._start, args=(make,), name=name, daemon=True)
        self._thread.start()

    def _start(self, make: Callable[[], Iterator[dict]]) -> None:
        try:
            self._rows = iter(make())
            self._first = next(self._rows, self._END)
        except BaseException as e:  # noqa: BLE001 - re-raised in the iterating thread
            self._error = e

    def __iter__(self) -> Iterator[dict]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self._first is self._END:
            return iter(())
        first, self._first = self._first, self._END
        return itertools.chain([first], self._rows)


def collate_rows(rows: list[dict], processor) -> dict:
    """A micro-batch of encoded rows as model inputs (on CPU)."""
    image_shape = (3, processor.image_size, processor.image_size)
    pixels = [np.frombuffer(r["pixels"], dtype=np.uint8).reshape((int(r["n_images"]), *image_shape)) for r in rows]
    return processor.collate_arrays([r["input_ids"] for r in rows], [r["labels"] for r in rows], pixels)
