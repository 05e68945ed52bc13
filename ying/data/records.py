"""The records layout of a data dir, and the one place that lists, reads, writes and clears it.

    <data_dir>/records/<split>/*.parquet   RECORD_SCHEMA rows (zstd); any file names, read in sorted order
    <data_dir>/rejects/rejects.jsonl       {task, split, source, reason}: what a writing stage set aside
    <data_dir>/rejects/parts/*.jsonl       reject shards of a Ray Data write, merged into rejects.jsonl

Every stage that writes records (unify, the M3IT import, rephrase, QC, the mini-world's text
records) and every one that reads them (stats, review, the M3IT export, training, evaluation, Serve)
goes through these functions, so the layout is written down once. ``data_dir`` is a local path or
an fsspec URL (``s3://...``), as everywhere in ``ying.storage``.

Files are listed in sorted order: training orders records by seed over the files' rows, so the
same files must come back in the same order on every machine.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from .. import storage
from .schema import RECORD_SCHEMA

__all__ = [
    "split_dir",
    "rejects_path",
    "reject_parts_dir",
    "list_files",
    "file_urls",
    "read_columns",
    "read_split",
    "read_records",
    "count_records",
    "task_counts",
    "read_rejects",
    "RecordFile",
    "SplitFiles",
    "clear_records",
    "data_fingerprint",
]


def split_dir(data_dir: str, split: str) -> str:
    """``<data_dir>/records/<split>``: the folder of one split's Parquet files."""
    return storage.join(data_dir, "records", split)


def rejects_path(data_dir: str) -> str:
    return storage.join(data_dir, "rejects", "rejects.jsonl")


def reject_parts_dir(data_dir: str) -> str:
    return storage.join(data_dir, "rejects", "parts")


def list_files(data_dir: str, split: str) -> tuple[Any, list[str]]:
    """(fsspec filesystem, the split's Parquet files, sorted, as that filesystem's paths); no folder, no files."""
    fs, path = storage.filesystem(split_dir(data_dir, split))
    if not fs.exists(path):
        return fs, []
    return fs, sorted(f for f in fs.find(path) if f.endswith(".parquet"))


def file_urls(data_dir: str, split: str) -> list[str]:
    """The split's Parquet files as paths any process can open with ``storage.filesystem`` (an object
    store's keep their protocol), sorted."""
    fs, files = list_files(data_dir, split)
    local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
    return files if local else [fs.unstrip_protocol(f) for f in files]


def read_columns(data_dir: str, split: str, columns: list[str]) -> Iterator[tuple[str, pa.Table]]:
    """``(file, table of columns)`` per file of the split, in file order: no column read that isn't asked for."""
    fs, files = list_files(data_dir, split)
    for f in files:
        with fs.open(f, "rb") as fh:
            yield f, pq.read_table(fh, columns=columns)


def read_split(data_dir: str, split: str, tasks: list[str] | None = None):
    """The records of one split as a Ray Dataset, optionally only some tasks."""
    import ray

    fs, files = list_files(data_dir, split)
    if not files:
        ds = ray.data.from_arrow(RECORD_SCHEMA.empty_table())
    else:
        rfs = fs if "://" in data_dir else None
        ds = ray.data.read_parquet(files, filesystem=rfs, schema=RECORD_SCHEMA)
    if tasks is not None:
        from ray.data.expressions import col

        ds = ds.filter(expr=col("task").is_in(list(tasks)))
    return ds


def read_records(data_dir: str, split: str, tasks: list[str] | None = None) -> list[dict]:
    """The records of one split as a list of dicts, with pyarrow only (for small consumers)."""
    fs, files = list_files(data_dir, split)
    rows: list[dict] = []
    for f in files:
        with fs.open(f, "rb") as fh:
            table = pq.read_table(fh, schema=RECORD_SCHEMA)
        rows.extend(table.to_pylist())
    if tasks is not None:
        wanted = set(tasks)
        rows = [r for r in rows if r["task"] in wanted]
    return rows


def count_records(data_dir: str, split: str, tasks: list[str] | None = None) -> int:
    """How many records a split holds: from the footers for all tasks, else from the ``task``
    column alone (no image bytes either way)."""
    fs, files = list_files(data_dir, split)
    wanted = None if tasks is None else set(tasks)
    n = 0
    for f in files:
        with fs.open(f, "rb") as fh:
            if wanted is None:
                n += pq.ParquetFile(fh).metadata.num_rows
            else:
                n += sum(t in wanted for t in pq.read_table(fh, columns=["task"]).column("task").to_pylist())
    return n


def task_counts(data_dir: str, split: str) -> dict[str, int]:
    """``{task: records}`` of a split, tasks in the order the files first show them (``task`` column only)."""
    counts: dict[str, int] = {}
    for _, table in read_columns(data_dir, split, ["task"]):
        for task in table.column("task").to_pylist():
            counts[task] = counts.get(task, 0) + 1
    return counts


def read_rejects(data_dir: str) -> list[dict]:
    """The rows of ``rejects/rejects.jsonl`` (none when a stage set nothing aside or wrote no file)."""
    path = rejects_path(data_dir)
    if not storage.exists(path):
        return []
    fs, p = storage.filesystem(path)
    with fs.open(p, "r", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _as_records(rows: list[dict] | pa.Table) -> pa.Table:
    if isinstance(rows, pa.Table):
        return rows if rows.schema.equals(RECORD_SCHEMA) else rows.select(RECORD_SCHEMA.names).cast(RECORD_SCHEMA)
    return pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)


class RecordFile:
    """One Parquet file of records: RECORD_SCHEMA, zstd, a row group per ``write``.

    The file is created at once, so one closed without a write still has the schema (a split of no
    records reads as empty). Written in place, as every writer of records always was: a stage's
    manifest, written last, says when its files are complete.
    """

    def __init__(self, path: str):
        fs, p = storage.filesystem(path)
        fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
        self.path = path
        self._fh = fs.open(p, "wb")
        # zstd: the text columns shrink ~2x more than with snappy; JPEG bytes don't shrink either way.
        self._writer = pq.ParquetWriter(self._fh, RECORD_SCHEMA, compression="zstd")

    def write(self, rows: list[dict] | pa.Table) -> None:
        """One row group of ``rows`` (dicts or a table with RECORD_SCHEMA's columns); nothing for no rows."""
        table = _as_records(rows)
        if table.num_rows:
            self._writer.write_table(table)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._fh.close()
            self._writer = None

    def __enter__(self) -> RecordFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SplitFiles:
    """Records of any split into ``<data_dir>/records/<split>/<file_name>``: one ``RecordFile`` per
    split, opened at that split's first write (a split without rows gets no file)."""

    def __init__(self, data_dir: str, file_name: str):
        self.data_dir = data_dir
        self.file_name = file_name
        self._open: dict[str, RecordFile] = {}

    def write(self, split: str, rows: list[dict] | pa.Table) -> None:
        """One row group of ``split``'s file."""
        if split not in self._open:
            self._open[split] = RecordFile(storage.join(split_dir(self.data_dir, split), self.file_name))
        self._open[split].write(rows)

    def close(self) -> None:
        for f in self._open.values():
            f.close()
        self._open.clear()

    def __enter__(self) -> SplitFiles:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def clear_records(data_dir: str) -> None:
    """Remove the data dir's records and reject shards before a stage writes it anew: a re-run
    replaces, never mixes with, an earlier run's files (writers name their files anew each run).
    ``rejects/rejects.jsonl`` stays until the stage writes its own."""
    for path in (storage.join(data_dir, "records"), reject_parts_dir(data_dir)):
        fs, p = storage.filesystem(path)
        if fs.exists(p):
            fs.rm(p, recursive=True)


def data_fingerprint(data_dir: str) -> str:
    """What a data dir holds, for the hashes of what is computed from it (a training plan, a Serve
    evaluation): the writing stage's fingerprint when it left a manifest, else the record files'
    names (relative to ``records/``, so the same data moved elsewhere keeps its fingerprint) and
    sizes."""
    manifest = storage.read_manifest(data_dir)
    if manifest and manifest.get("fingerprint"):
        return f"manifest:{manifest['fingerprint']}"
    fs, path = storage.filesystem(storage.join(data_dir, "records"))
    listing = sorted((f, fs.size(f)) for f in fs.find(path) if f.endswith(".parquet")) if fs.exists(path) else []
    return "files:" + storage.fingerprint([[f.rsplit("/records/", 1)[-1], n] for f, n in listing])
