"""A Ray Data sink that writes records into ``<out_dir>/records/<split>/`` and set-aside rows into reject shards
(the layout and the file writer are ``ying.data.records``'s).

One Ray Data pipeline can then carry every split (the rows say their split), so a stage reads, maps
and writes all of them in one pass with its actors started once, instead of one pipeline per split.

Rows are records (``RECORD_SCHEMA``). A pipeline that also sets rows aside adds a ``_kind`` column:
``record`` (written), ``reject`` (``_reason`` and ``_source`` go to a JSON-lines reject shard under
``<out_dir>/rejects/parts/``) or ``count`` (``_read`` source lines read by one producer, for the
reconciliation read = written + rejected). ``write_split_records`` returns the totals per task and split.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc
from ray.data import Datasink
from ray.data.block import Block, BlockAccessor

from ying import storage
from ying.data.records import SplitFiles, reject_parts_dir, rejects_path
from ying.data.schema import RECORD_SCHEMA, Reject

__all__ = ["SplitRecordsSink", "write_split_records", "merge_reject_parts", "KIND", "REASON", "SOURCE", "READ"]

KIND, REASON, SOURCE, READ = "_kind", "_reason", "_source", "_read"


def _key(task: str, split: str) -> str:
    return f"{task}\t{split}"


class SplitRecordsSink(Datasink):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.totals: dict[str, Counter] = {}

    def write(self, blocks: Iterable[Block], ctx) -> dict[str, Any]:
        written: Counter = Counter()
        rejected: Counter = Counter()
        read: Counter = Counter()
        name = f"{getattr(ctx, 'task_idx', 0):06d}-{uuid.uuid4().hex[:12]}"
        by_split: dict[str, list[pa.Table]] = {}
        reject_lines: list[str] = []
        for block in blocks:
            table = BlockAccessor.for_block(block).to_arrow()
            if table.num_rows == 0:
                continue
            if KIND in table.column_names:
                kinds = table.column(KIND)
                for row in table.filter(pc.equal(kinds, "reject")).select(["task", "split", REASON, SOURCE]).to_pylist():
                    rejected[_key(row["task"], row["split"])] += 1
                    reject_lines.append(json.dumps(Reject(row["task"], row["split"], row[SOURCE], row[REASON]).to_row(),
                                                   ensure_ascii=False))
                for row in table.filter(pc.equal(kinds, "count")).select(["task", "split", READ]).to_pylist():
                    read[_key(row["task"], row["split"])] += int(row[READ])
                table = table.filter(pc.equal(kinds, "record"))
            table = table.select(RECORD_SCHEMA.names).cast(RECORD_SCHEMA)
            for split in pc.unique(table.column("split")).to_pylist():
                part = table.filter(pc.equal(table.column("split"), split))
                by_split.setdefault(split, []).append(part)
                for task, n in Counter(part.column("task").to_pylist()).items():
                    written[_key(task, split)] += n
        with SplitFiles(self.out_dir, f"{name}.parquet") as files:
            for split, parts in by_split.items():
                table = pa.concat_tables(parts)
                # One task per row group: readers of some tasks (a training stage) skip the rest from
                # the row groups' statistics, without reading their images.
                for task in sorted(pc.unique(table.column("task")).to_pylist()):
                    files.write(split, table.filter(pc.equal(table.column("task"), task)))
        if reject_lines:
            storage.write_bytes_atomic(storage.join(reject_parts_dir(self.out_dir), f"{name}.jsonl"),
                                       ("\n".join(reject_lines) + "\n").encode("utf-8"))
        return {"written": dict(written), "rejected": dict(rejected), "read": dict(read)}

    def on_write_complete(self, write_result) -> None:
        totals = {"written": Counter(), "rejected": Counter(), "read": Counter()}
        for result in write_result.write_returns:
            for name in totals:
                totals[name].update(result.get(name, {}))
        self.totals = totals


def write_split_records(ds, out_dir: str) -> dict[str, dict[str, dict[str, int]]]:
    """Write ``ds`` with ``SplitRecordsSink``; ``{task: {split: {"read", "written", "rejected"}}}``.

    ``read`` comes from the pipeline's ``count`` rows (0 when it emits none)."""
    sink = SplitRecordsSink(out_dir)
    ds.write_datasink(sink)
    out: dict[str, dict[str, dict[str, int]]] = {}
    for name, counter in sink.totals.items():
        for key, n in counter.items():
            task, split = key.split("\t")
            out.setdefault(task, {}).setdefault(split, {"read": 0, "written": 0, "rejected": 0})[name] += n
    return out


def merge_reject_parts(out_dir: str) -> int:
    """Concatenate ``rejects/parts/*.jsonl`` into ``rejects/rejects.jsonl`` (streamed); returns the lines."""
    fs, parts_dir = storage.filesystem(reject_parts_dir(out_dir))
    parts = sorted(f for f in fs.find(parts_dir) if f.endswith(".jsonl")) if fs.exists(parts_dir) else []
    tfs, tpath = storage.filesystem(rejects_path(out_dir))
    tfs.makedirs(tpath.rpartition("/")[0], exist_ok=True)
    lines = 0
    with tfs.open(tpath, "wb") as out:
        for part in parts:
            with fs.open(part, "rb") as fh:
                for line in fh:
                    out.write(line)
                    lines += 1
    if parts:
        fs.rm(parts_dir, recursive=True)
    return lines
