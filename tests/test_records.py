"""ying.data.records: the records layout's one home (listing, reads, counts, the writer, clearing, fingerprint)."""

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ying import storage
from ying.data import records
from ying.data.schema import RECORD_SCHEMA


def rec(i: int, task: str = "coco", split: str = "train") -> dict:
    return {"id": f"{task}-{split}-{i}", "task": task, "category": "captioning", "lang": "en", "split": split,
            "images": [b"\x89PNG" + bytes([i % 256])], "instruction": "Describe.", "inputs": "",
            "outputs": f"caption {i}", "meta": "{}"}


def write(data_dir, split: str, name: str, rows: list[dict]) -> None:
    with records.RecordFile(storage.join(records.split_dir(str(data_dir), split), name)) as f:
        f.write(rows)


def test_layout_paths(tmp_path):
    d = str(tmp_path)
    assert records.split_dir(d, "train") == str(tmp_path / "records" / "train")
    assert records.rejects_path(d) == str(tmp_path / "rejects" / "rejects.jsonl")
    assert records.split_dir("s3://b/run/qc", "test") == "s3://b/run/qc/records/test"


def test_files_are_listed_sorted_parquet_only(tmp_path):
    for name in ("b.parquet", "a.parquet", "c-10.parquet", "c-9.parquet"):
        write(tmp_path, "train", name, [rec(0)])
    (tmp_path / "records" / "train" / "notes.txt").write_text("not records")
    fs, files = records.list_files(str(tmp_path), "train")
    assert [f.rsplit("/", 1)[1] for f in files] == ["a.parquet", "b.parquet", "c-10.parquet", "c-9.parquet"]
    assert records.file_urls(str(tmp_path), "train") == files  # local: plain paths
    assert records.list_files(str(tmp_path), "test")[1] == [] and records.file_urls(str(tmp_path), "test") == []
    assert records.read_records(str(tmp_path / "nowhere"), "train") == []


def test_reads_and_counts_follow_file_order(tmp_path):
    write(tmp_path, "train", "b.parquet", [rec(3, "vqa-v2"), rec(4)])
    write(tmp_path, "train", "a.parquet", [rec(1), rec(2, "vqa-v2")])
    d = str(tmp_path)
    assert [r["id"] for r in records.read_records(d, "train")] == [
        "coco-train-1", "vqa-v2-train-2", "vqa-v2-train-3", "coco-train-4"]
    assert [r["id"] for r in records.read_records(d, "train", ["vqa-v2"])] == ["vqa-v2-train-2", "vqa-v2-train-3"]
    assert records.count_records(d, "train") == 4
    assert records.count_records(d, "train", ["coco"]) == 2 and records.count_records(d, "train", ["none"]) == 0
    assert records.count_records(d, "validation") == 0
    assert list(records.task_counts(d, "train").items()) == [("coco", 2), ("vqa-v2", 2)]
    read = [(f.rsplit("/", 1)[1], t.column_names, t.num_rows) for f, t in records.read_columns(d, "train", ["task"])]
    assert read == [("a.parquet", ["task"], 2), ("b.parquet", ["task"], 2)]


def test_writer_round_trip_row_groups_and_empty_file(tmp_path):
    path = str(tmp_path / "records" / "train" / "one.parquet")
    with records.RecordFile(path) as f:
        f.write([rec(1), rec(2)])
        f.write([])  # nothing, not an empty row group
        table = pa.Table.from_pylist([rec(3)], schema=RECORD_SCHEMA)
        f.write(table.select(list(reversed(table.column_names))))  # a table's columns, in any order
    pf = pq.ParquetFile(path)
    assert pf.schema_arrow.remove_metadata() == RECORD_SCHEMA
    assert [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)] == [2, 1]
    assert pf.metadata.row_group(0).column(0).compression == "ZSTD"
    assert records.read_records(str(tmp_path), "train") == [rec(1), rec(2), rec(3)]
    with records.RecordFile(str(tmp_path / "records" / "test" / "empty.parquet")):
        pass  # a file with the schema and no rows: the split reads as empty
    assert records.read_records(str(tmp_path), "test") == [] and records.count_records(str(tmp_path), "test") == 0


def test_split_files_open_a_file_per_split_that_gets_rows(tmp_path):
    with records.SplitFiles(str(tmp_path), "chunk-0.parquet") as files:
        files.write("train", [rec(1), rec(2)])
        files.write("validation", [rec(5, split="validation")])
        files.write("train", [rec(3)])
    assert sorted(p.name for p in (tmp_path / "records").iterdir()) == ["train", "validation"]
    assert [r["id"] for r in records.read_records(str(tmp_path), "train")] == [
        "coco-train-1", "coco-train-2", "coco-train-3"]
    assert pq.ParquetFile(tmp_path / "records" / "train" / "chunk-0.parquet").num_row_groups == 2


def test_clear_records_keeps_the_rejects_file(tmp_path):
    d = str(tmp_path)
    write(tmp_path, "train", "a.parquet", [rec(1)])
    write(tmp_path, "odd-split", "a.parquet", [rec(1)])
    storage.write_bytes_atomic(storage.join(records.reject_parts_dir(d), "0.jsonl"), b"{}\n")
    storage.write_bytes_atomic(records.rejects_path(d), (json.dumps({"task": "coco", "reason": "x"}) + "\n").encode())
    records.clear_records(d)
    assert not (tmp_path / "records").exists() and not (tmp_path / "rejects" / "parts").exists()
    assert records.read_rejects(d) == [{"task": "coco", "reason": "x"}]
    records.clear_records(d)  # nothing to clear: no error
    assert records.read_rejects(str(tmp_path / "nowhere")) == []


def test_fingerprint_follows_the_rows_not_the_place(tmp_path):
    """Training's plan hash: the same data moved elsewhere resumes; changed data never does."""
    a = tmp_path / "a"
    write(a, "train", "part-0.parquet", [rec(1), rec(2)])
    write(a, "test", "part-0.parquet", [rec(3, split="test")])
    fp = records.data_fingerprint(str(a))
    assert fp.startswith("files:") and fp == records.data_fingerprint(str(a))
    shutil.copytree(a, tmp_path / "elsewhere" / "b")
    assert records.data_fingerprint(str(tmp_path / "elsewhere" / "b")) == fp
    write(a, "train", "part-0.parquet", [rec(1), rec(2), rec(4)])  # a file's rows change
    assert records.data_fingerprint(str(a)) != fp
    changed = records.data_fingerprint(str(a))
    write(a, "validation", "part-0.parquet", [rec(5, split="validation")])  # a file comes
    assert records.data_fingerprint(str(a)) not in (fp, changed)
    assert records.data_fingerprint(str(tmp_path / "empty")) == records.data_fingerprint(str(tmp_path / "none"))
    storage.write_manifest(str(a), {"stage": "qc", "fingerprint": "qc-fp"})  # the writing stage's word wins
    assert records.data_fingerprint(str(a)) == "manifest:qc-fp"


@pytest.fixture(scope="module")
def s3_bucket(s3_endpoint):
    return s3_endpoint("ying-records")


def test_layout_on_s3(s3_bucket):
    d = f"{s3_bucket}/run/unify"
    with records.SplitFiles(d, "b.parquet") as files:
        files.write("train", [rec(2), rec(3, "vqa-v2")])
    with records.RecordFile(storage.join(records.split_dir(d, "train"), "a.parquet")) as f:
        f.write([rec(1)])
    assert [u.rsplit("/", 1)[1] for u in records.file_urls(d, "train")] == ["a.parquet", "b.parquet"]
    assert all(u.startswith("s3://") for u in records.file_urls(d, "train"))
    assert [r["id"] for r in records.read_records(d, "train")] == ["coco-train-1", "coco-train-2", "vqa-v2-train-3"]
    assert records.count_records(d, "train", ["coco"]) == 2 and records.count_records(d, "train") == 3
    fp = records.data_fingerprint(d)
    with records.RecordFile(storage.join(records.split_dir(d, "train"), "a.parquet")) as f:
        f.write([rec(1), rec(9)])
    assert records.data_fingerprint(d) != fp
    records.clear_records(d)
    assert records.list_files(d, "train")[1] == [] and records.data_fingerprint(d) == records.data_fingerprint(
        f"{s3_bucket}/run/none")
