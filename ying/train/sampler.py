"""Which records each training rank reads, and in which order: a function of (seed, epoch, rank,
world size) only, never of timing or of where Ray put a block.

A stage's records form an index: its files (sorted) and how many of each file's rows belong to
the stage. An epoch lays them out as one sequence:

    1. the files in an order drawn from (seed, epoch), their rows in file order;
    2. the sequence cut into ``world`` equal, contiguous slices (the last ``total % world`` records
       of the epoch's sequence sit this epoch out): rank r reads only its slice, so every record
       is read once per epoch across the ranks, and every rank gets the same number of batches
       (ZeRO-3 hangs on an uneven count);
    3. each rank's slice shuffled within windows of ``window`` records, by (seed, epoch, rank,
       window index): what a local shuffle buffer does, but reproducible.

A rank's *position* is the number of records of its epoch it has trained on. A checkpoint stores
(epoch, position); a resume recomputes the same sequence and starts reading at the window that
holds the position, so the records trained after a resume are exactly those an uninterrupted run
trains next (the same idea as MosaicML Streaming's deterministic mid-epoch resumption).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np

__all__ = ["RecordIndex", "Segment", "record_index", "rank_share", "rank_segments", "window_order",
           "rank_epoch_records"]


@dataclass(frozen=True)
class RecordIndex:
    """A split's records of one stage: which files hold them and how many each holds."""

    split_dir: str  # <data_dir>/records/<split> (local or s3://)
    files: tuple[str, ...]  # paths relative to split_dir, sorted
    counts: tuple[int, ...]  # the stage's rows in each file
    tasks: tuple[str, ...]
    ids: tuple[str, ...] | None = None  # only these record ids (a validation sample, per-task caps)
    # Bytes of each file's footer tail (footer, its length, magic), so that a reader fetches it in
    # one exact read. Sizes, not the footers: the index is pickled to every read task, and the
    # footers of thousands of files would be megabytes.
    footer_sizes: tuple[int | None, ...] | None = None

    @property
    def total(self) -> int:
        return sum(self.counts)

    def footer_size(self, file: int) -> int | None:
        return self.footer_sizes[file] if self.footer_sizes is not None else None


@dataclass(frozen=True)
class Segment:
    """``count`` consecutive stage rows of ``index.files[file]``, from its ``start``-th stage row."""

    file: int
    start: int
    count: int


def record_index(data_dir: str, split: str, tasks: list[str], ids: Iterable[str] | None = None,
                 filesystem=None) -> RecordIndex:
    """The index of ``split``'s records of ``tasks`` (and ``ids``): each file's footer read once;
    a row group that its ``task`` statistics show to hold one stage task (and no id choice) is
    counted from the footer, the others from their id and task columns. ``filesystem`` replaces
    the split's own (benchmarks count the bytes read through theirs)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from ying import storage
    from ying.data.records import split_dir
    from ying.train.ingest import rows_of_tasks, stage_footers

    folder = split_dir(data_dir, split)
    fs, footers = stage_footers(data_dir, split, tasks, filesystem=filesystem)
    _, root = storage.filesystem(folder)
    wanted_ids = tuple(sorted(set(ids))) if ids is not None else None
    stage_tasks = set(tasks)
    task_set, id_set = pa.array(sorted(stage_tasks)), pa.array(wanted_ids) if wanted_ids is not None else None
    kept, counts, sizes = [], [], []
    for f, meta, footer_size in footers:
        whole = {i for i in range(meta.num_row_groups) if id_set is None and rows_of_tasks(meta, i, stage_tasks)}
        to_read = [i for i in range(meta.num_row_groups) if i not in whole]
        n = sum(meta.row_group(i).num_rows for i in whole)
        if to_read:
            with fs.open(f, "rb") as fh:  # the footer stage_footers read, not a second read of it
                table = pq.ParquetFile(fh, metadata=meta).read_row_groups(to_read, columns=["id", "task"])
            mask = pc.is_in(table.column("task"), value_set=task_set)
            if id_set is not None:
                mask = pc.and_(mask, pc.is_in(table.column("id"), value_set=id_set))
            n += int(pc.sum(mask).as_py() or 0)
        if n:
            kept.append(f[len(root.rstrip("/")) + 1:])
            counts.append(n)
            sizes.append(footer_size)
    return RecordIndex(folder, tuple(kept), tuple(counts), tuple(sorted(stage_tasks)), wanted_ids, tuple(sizes))


def rank_share(total: int, world: int) -> int:
    """Records each rank reads per epoch (equal for all ranks)."""
    return total // max(1, world)


def _file_order(n_files: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    if not shuffle:
        return np.arange(n_files)
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(n_files)


def rank_segments(index: RecordIndex, seed: int, epoch: int, rank: int, world: int, begin: int = 0,
                  shuffle: bool = True) -> list[Segment]:
    """The segments holding positions ``[begin, share)`` of ``rank``'s slice of the epoch, in order."""
    share = rank_share(index.total, world)
    lo, hi = rank * share + begin, (rank + 1) * share
    segments, offset = [], 0  # offset: sequence position of the current file's first row
    for f in _file_order(len(index.files), seed, epoch, shuffle):
        n = index.counts[f]
        start, end = max(lo, offset), min(hi, offset + n)
        if start < end:
            segments.append(Segment(int(f), start - offset, end - start))
        offset += n
        if offset >= hi:
            break
    return segments


def window_order(seed: int, epoch: int, rank: int, window: int, size: int) -> np.ndarray:
    """The order in which a rank trains on the ``size`` records of one of its windows."""
    return np.random.default_rng([seed, epoch, rank, window]).permutation(size)


def rank_epoch_records(read: Callable[[list[Segment]], Iterator[dict]], index: RecordIndex, seed: int,
                       epoch: int, rank: int, world: int, window: int, start: int = 0,
                       shuffle: bool = True) -> Iterator[dict]:
    """``rank``'s records of ``epoch`` from position ``start``, each once, in the seeded order.

    ``read(segments)`` yields the encoded rows of those segments in order (Ray Data, in
    ``ying.train.ingest``). Reading starts at the window that holds ``start``; that window's
    records before ``start`` are read again but not yielded. ``shuffle=False`` (validation):
    file order, no windows.
    """
    share = rank_share(index.total, world)
    if start >= share:
        return
    window = max(1, window) if shuffle else share
    first = start // window
    rows = read(rank_segments(index, seed, epoch, rank, world, begin=first * window, shuffle=shuffle))
    for w in range(first, -(-share // window)):
        size = min(window, share - w * window)
        buffer = list(itertools.islice(rows, size))
        if len(buffer) < size:
            raise RuntimeError(f"{index.split_dir}: rank {rank} expected {size} records in window {w} of epoch "
                               f"{epoch} and read {len(buffer)}: the records changed under a running stage")
        order = window_order(seed, epoch, rank, w, size) if shuffle else range(size)
        skip = start - w * window if w == first else 0
        for i in list(order)[skip:]:
            yield buffer[i]
