"""The sampler: which records each rank trains on, and in which order, from (seed, epoch, rank, world) only."""

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
