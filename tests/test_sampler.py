"""The sampler: which records each rank trains on, and in which order, from (seed, epoch, rank, world) only."""

import itertools

import pytest

from ying.train.sampler import RecordIndex, rank_epoch_records, rank_segments, rank_share, record_index

INDEX = RecordIndex("mem://records/train", tuple(f"f{i}.parquet" for i in range(7)), (5, 3, 9, 1, 4, 6, 2), ("t",))


def fake_read(index: RecordIndex):
    """The rows a reader would return for segments: (file, stage row) pairs, in segment order."""
    def read(segments):
        for s in segments:
            for row in range(s.start, s.start + s.count):
                yield (s.file, row)
    return read


def epoch(index, seed, ep, rank, world, window, start=0):
    return list(rank_epoch_records(fake_read(index), index, seed, ep, rank, world, window, start=start))


@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_rank_gets_an_equal_disjoint_share_and_no_record_twice(world):
    shares = [epoch(INDEX, 0, 0, r, world, 4) for r in range(world)]
    assert {len(s) for s in shares} == {rank_share(INDEX.total, world)}
    flat = [x for s in shares for x in s]
    assert len(flat) == len(set(flat))
    every = {(f, row) for f, n in enumerate(INDEX.counts) for row in range(n)}
    assert set(flat) <= every and len(every) - len(flat) == INDEX.total % world


def test_the_order_is_a_function_of_seed_epoch_rank_and_world_only():
    assert epoch(INDEX, 3, 1, 0, 2, 4) == epoch(INDEX, 3, 1, 0, 2, 4)
    assert epoch(INDEX, 3, 1, 0, 2, 4) != epoch(INDEX, 3, 2, 0, 2, 4)  # each epoch reshuffles
    assert epoch(INDEX, 3, 1, 0, 2, 4) != epoch(INDEX, 4, 1, 0, 2, 4)  # and each seed
    # A window as large as the share is a full shuffle of it; the files are shuffled too.
    assert sorted(epoch(INDEX, 0, 0, 0, 1, 100)) == sorted(epoch(INDEX, 0, 5, 0, 1, 100))


@pytest.mark.parametrize("start", [0, 1, 3, 4, 5, 11, 14, 15])
def test_a_resume_at_any_position_reads_exactly_what_the_uninterrupted_epoch_reads_next(start):
    full = epoch(INDEX, 7, 2, 1, 2, 4)
    assert epoch(INDEX, 7, 2, 1, 2, 4, start=start) == full[start:]


def test_a_resume_reads_from_the_window_of_its_position_not_from_the_start():
    asked = []

    def read(segments):
        asked.extend(segments)
        return fake_read(INDEX)(segments)

    list(rank_epoch_records(read, INDEX, 0, 0, 0, 1, 4, start=13))
    assert sum(s.count for s in asked) == INDEX.total - 12  # windows 0-2 (12 records) are not read again


def test_segments_cover_the_rank_slice_in_the_epoch_file_order():
    segments = rank_segments(INDEX, 0, 0, 0, 1)
    assert sorted(s.file for s in segments) == list(range(7)) and sum(s.count for s in segments) == INDEX.total
    assert [s.file for s in segments] != list(range(7))  # shuffled by (seed, epoch)
    unshuffled = rank_segments(INDEX, 0, 0, 1, 2, shuffle=False)
    # 30 records, 15 per rank: rank 1 starts at position 15 = file 2's row 7 (files 0 and 1 hold 8)
    assert (unshuffled[0].file, unshuffled[0].start) == (2, 7)


def test_record_index_counts_the_stage_rows_of_each_file(tmp_path):
    from tests.test_train import write_records

    data_dir = write_records(tmp_path, {"coco": {"train": 6}, "vqa-v2": {"train": 4}})
    index = record_index(data_dir, "train", ["coco", "vqa-v2"])
    assert index.files == ("coco-train-0.parquet", "vqa-v2-train-0.parquet") and index.counts == (6, 4)
    only = record_index(data_dir, "train", ["coco"], ids=["coco-train-1", "coco-train-4", "vqa-v2-train-0"])
    assert only.files == ("coco-train-0.parquet",) and only.counts == (2,)


class _ReadLog:
    """An open file that logs each read as (path, offset, bytes)."""

    def __init__(self, f, path, log):
        self._f, self._path, self._log = f, path, log

    def read(self, *args):
        at = self._f.tell()
        data = self._f.read(*args)
        self._log.append((self._path, at, len(data)))
        return data

    def readinto(self, buffer):
        at = self._f.tell()
        n = self._f.readinto(buffer) or 0
        self._log.append((self._path, at, n))
        return n

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __getattr__(self, name):
        return getattr(self._f, name)


def _logging_fs(log):
    from fsspec.implementations.local import LocalFileSystem

    class LoggingFS(LocalFileSystem):
        cachable = False

        def _open(self, path, mode="rb", **kwargs):
            return _ReadLog(super()._open(path, mode=mode, **kwargs), path.rsplit("/", 1)[-1], log)

    return LoggingFS()


class _ShapeOnlyProcessor:
    """Encodes nothing: the test is about which bytes are read, not about tokens."""

    def encode_train_arrays(self, record):
        import numpy as np

        return {"input_ids": np.zeros(1, np.int64), "labels": np.zeros(1, np.int64),
                "pixels": np.zeros((len(record["images"]), 3, 2, 2), np.uint8)}


def test_a_stage_reads_each_file_footer_once_and_no_byte_twice(tmp_path):
    """The index reads each file's footer once (a VQA file's footer only, for Stage I), and a
    rank's epoch reads each file's footer once more and every other byte it needs once: what
    bench_train's read_amplification measures, checked here per read."""
    import os

    from tests.test_train import write_records
    from ying.train.ingest import EncodeRecords, RecordPolicy

    data_dir = write_records(tmp_path, {"coco": {"train": 20}, "vqa-v2": {"train": 8}})
    folder = os.path.join(data_dir, "records", "train")
    sizes = {f: os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)}
    log = []
    index = record_index(data_dir, "train", ["coco"], filesystem=_logging_fs(log))
    assert index.files == ("coco-train-0.parquet",) and index.counts == (20,)
    # The index: each footer in one read of its exact size after the 8-byte length (pyarrow alone
    # reads a 64 KiB tail), and no rows: the coco file's statistics say all its rows are coco.
    for f, size in sizes.items():
        reads = [(at, n) for path, at, n in log if path == f]
        assert reads[0] == (size - 8, 8) and len(reads) == 2 and reads[1][0] + reads[1][1] == size, reads
        if f == "coco-train-0.parquet":
            assert reads[1][1] == index.footer_size(0)

    log.clear()
    encode = EncodeRecords(_ShapeOnlyProcessor(), RecordPolicy(), 0, index, filesystem=_logging_fs(log))
    segments = rank_segments(index, 0, 0, 0, 1)
    batch = {"file": [s.file for s in segments], "start": [s.start for s in segments],
             "count": [s.count for s in segments]}
    read_ids = [i for out in encode(batch) for i in out["id"]]
    assert sorted(read_ids) == sorted(f"coco-train-{i}" for i in range(20))
    assert {path for path, _, _ in log} == {"coco-train-0.parquet"}  # the VQA file is not opened
    size = sizes["coco-train-0.parquet"]
    spans = sorted((at, at + n) for _, at, n in log if n)
    assert spans[-1] == (size - index.footer_size(0), size)  # the footer, in one exact read
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans  # no byte read twice
    assert sum(n for _, _, n in log) <= size


def test_a_stream_read_ahead_gives_the_same_rows_and_starts_reading_before_it_is_iterated():
    """The training loop reads an epoch ahead (the first while DeepSpeed starts, the next while this
    one trains): the rows are those of the stream itself, in its order."""
    import threading

    from ying.train.ingest import ReadAhead

    started = threading.Event()

    def read(segments):
        started.set()
        return fake_read(INDEX)(segments)

    ahead = ReadAhead(lambda: rank_epoch_records(read, INDEX, 7, 2, 1, 2, 4))
    assert started.wait(10)  # reading began on the thread, before anyone asked for a row
    assert list(ahead) == epoch(INDEX, 7, 2, 1, 2, 4)
    assert list(ReadAhead(lambda: iter(()))) == []


def test_an_error_while_reading_ahead_reaches_the_loop_that_iterates():
    from ying.train.ingest import ReadAhead

    def short_read(segments):  # a file lost rows under a running stage
        return itertools.islice(fake_read(INDEX)(segments), 2)

    ahead = ReadAhead(lambda: rank_epoch_records(short_read, INDEX, 0, 0, 0, 1, 4))
    with pytest.raises(RuntimeError, match="expected 4 records in window 0"):
        list(ahead)
