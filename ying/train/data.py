"""Training data for one worker: its share of a split's records, streamed from Parquet.

Nothing here holds a whole split in memory (Stage I at paper scale is hundreds of millions of
captions): each epoch visits the split's files in a seeded order, keeps every ``world``-th
record of the stage's tasks starting at ``rank``, and mixes them through a bounded shuffle
buffer. The same seed, epoch, rank and world always give the same stream.
"""

from __future__ import annotations

import random
from typing import Iterator

import pyarrow.parquet as pq

from ying import storage

__all__ = ["split_files", "stream_records", "micro_batches", "first_records"]


def split_files(data_dir: str, split: str) -> tuple[object, list[str]]:
    fs, path = storage.filesystem(storage.join(data_dir, "records", split))
    if not fs.exists(path):
        return fs, []
    return fs, sorted(f for f in fs.find(path) if f.endswith(".parquet"))


def _task_rows(fs, files: list[str], tasks: set[str]) -> Iterator[dict]:
    for f in files:
        with fs.open(f, "rb") as fh:
            for batch in pq.ParquetFile(fh).iter_batches(batch_size=512):
                keep = [i for i, t in enumerate(batch.column("task").to_pylist()) if t in tasks]
                if keep:
                    yield from batch.take(keep).to_pylist()


def stream_records(data_dir: str, split: str, tasks: list[str], rank: int, world: int, seed: int,
                   epoch: int, buffer_size: int) -> Iterator[dict]:
    """One epoch of this worker's records, shuffled through a buffer of ``buffer_size`` rows."""
    fs, files = split_files(data_dir, split)
    rng = random.Random(seed * 1_000_003 + epoch)
    rng.shuffle(files)
    buffer: list[dict] = []
    for n, record in enumerate(_task_rows(fs, files, set(tasks))):
        if n % world != rank:
            continue
        buffer.append(record)
        if len(buffer) >= buffer_size:
            j = rng.randrange(len(buffer))
            buffer[j], buffer[-1] = buffer[-1], buffer[j]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer


def micro_batches(data_dir: str, tasks: list[str], rank: int, world: int, seed: int, batch_size: int,
                  buffer_size: int, start_step: int = 0) -> Iterator[list[dict]]:
    """Endless micro-batches over epochs; batch ``start_step`` onwards (exact resume after a restart)."""
    step, epoch = 0, 0
    while True:
        batch: list[dict] = []
        produced = False
        for record in stream_records(data_dir, "train", tasks, rank, world, seed, epoch, buffer_size):
            batch.append(record)
            if len(batch) == batch_size:
                produced = True
                if step >= start_step:
                    yield batch
                step += 1
                batch = []
        if not produced:
            raise ValueError(
                f"worker {rank}/{world} got fewer than {batch_size} training records of tasks {tasks} "
                f"under {data_dir}; lower the batch size or add data"
            )
        epoch += 1


def first_records(data_dir: str, split: str, tasks: list[str], limit: int) -> list[dict]:
    """The first ``limit`` records of the tasks in file order: a fixed evaluation sample."""
    fs, files = split_files(data_dir, split)
    out = []
    for record in _task_rows(fs, files, set(tasks)):
        out.append(record)
        if len(out) == limit:
            break
    return out
