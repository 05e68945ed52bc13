"""Evaluation reads in bounded memory (ying.eval.records): the same answers as reading whole splits,
over data spread across files and row groups, without holding a split."""

import hashlib
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ying.data.schema import RECORD_SCHEMA
from ying.eval.baselines import MajorityAnswerBaseline
from ying.eval.records import read_images, select_evaluation_records, training_summary


def _rec(task, split, i, outputs, instruction="Answer.", meta=None, images=None):
    return {"id": f"{task}-{split}-{i:04d}", "task": task, "category": "vqa", "lang": "en", "split": split,
            "images": images if images is not None else [f"{task}/{split}/{i}".encode()],
            "instruction": instruction, "inputs": f"q{i}", "outputs": outputs, "meta": json.dumps(meta or {})}


def _write(data_dir, split, rows, n_files=3, row_group_size=5, seed=0):
    """Rows shuffled over several files of several row groups each, as a real build leaves them."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    d = data_dir / "records" / split
    d.mkdir(parents=True, exist_ok=True)
    for k in range(n_files):
        part = rows[k::n_files]
        pq.write_table(pa.Table.from_pylist(part, schema=RECORD_SCHEMA), d / f"part-{k}.parquet",
                       row_group_size=row_group_size)


def test_training_summary_equals_counting_every_answer(tmp_path):
    rng = random.Random(1)
    train = []
    # vqa: a clear winner; tie: two answers tied at the top (alphabetically first wins);
    # caption: every answer distinct (the smallest text wins); one task's answers dominate globally.
    train += [_rec("vqa", "train", i, rng.choice(["red", "red", "red", "blue", "green"]), instruction=f"I{i % 3}")
              for i in range(40)]
    train += [_rec("tie", "train", i, ["zebra", "apple", "zebra", "apple", "mango"][i % 5]) for i in range(20)]
    train += [_rec("caption", "train", i, f"a caption number {i:03d}", instruction="Describe.") for i in range(30)]
    _write(tmp_path, "train", train)
    summary = training_summary(str(tmp_path))
    reference = MajorityAnswerBaseline().fit(train)
    assert summary.majority == reference.by_task
    assert summary.majority["tie"] == "apple" and summary.majority["caption"] == "a caption number 000"
    assert summary.global_majority == reference.global_answer == "red"
    assert summary.instructions == {"vqa": {"I0", "I1", "I2"}, "tie": {"Answer."}, "caption": {"Describe."}}
    assert summary.n_records == len(train)


def test_training_summary_without_train_records_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no train records"):
        training_summary(str(tmp_path))


def test_selection_is_the_first_records_by_id_and_every_caption_of_the_first_images(tmp_path):
    test, validation = [], []
    test += [_rec("vqa", "test", i, f"a{i}") for i in range(23)]
    validation += [_rec("vqa", "validation", i, f"v{i}") for i in range(5)]  # vqa has test: validation unused
    validation += [_rec("okvqa", "validation", i, f"o{i}") for i in range(9)]  # okvqa has only validation
    # coco: 4 captions per image; image 3's first caption has the smallest id of all.
    for img in range(8):
        for c in range(4):
            i = (7 - img) * 10 + c if img == 3 else img * 10 + c + 100
            test.append(_rec("coco", "test", i, f"caption {c} of image {img}", meta={"cocoid": img},
                             images=[f"coco image {img}".encode()]))
    # imported records whose meta names no image: the first image's bytes say which image it is
    test += [_rec("coco", "test", 900 + i, f"imported {i}", images=[b"shared image"]) for i in range(3)]
    _write(tmp_path, "test", test)
    _write(tmp_path, "validation", validation, seed=1)

    sel = select_evaluation_records(str(tmp_path), ["vqa", "okvqa", "coco", "missing"], limit=4, by_image_tasks=["coco"])
    assert sel.splits == {"vqa": "test", "okvqa": "validation", "coco": "test"}
    assert [r["id"] for r in sel.records["vqa"]] == [f"vqa-test-{i:04d}" for i in range(4)]
    assert [r["id"] for r in sel.records["okvqa"]] == [f"okvqa-validation-{i:04d}" for i in range(4)]
    assert "missing" not in sel.records
    by_id = {r["id"]: r for r in test}
    first_coco = sorted(r["id"] for r in test if r["task"] == "coco")[:4]
    assert [r["id"] for r in sel.records["coco"]] == first_coco
    # The first four images by their first caption's id: image 3 (ids 40..), then 0, 1, 2 (ids 100..).
    images = [json.loads(r["meta"]).get("cocoid") for r in sel.by_image["coco"]]
    assert sorted(set(images)) == [0, 1, 2, 3] and len(images) == 16
    assert [r["id"] for r in sel.by_image["coco"]] == sorted(r["id"] for r in sel.by_image["coco"])
    # Text columns as stored, no image bytes; digests and a reference to read the bytes back.
    for rec in sel.records["vqa"] + sel.by_image["coco"]:
        src = by_id.get(rec["id"]) or next(r for r in test if r["id"] == rec["id"])
        assert "images" not in rec
        assert {k: rec[k] for k in ("task", "instruction", "inputs", "outputs", "meta")} == \
               {k: src[k] for k in ("task", "instruction", "inputs", "outputs", "meta")}
        assert rec["image_digests"] == [hashlib.sha256(b).hexdigest() for b in src["images"]]
    refs = [r["image_ref"] for r in sel.by_image["coco"] + sel.records["vqa"]]
    assert read_images(refs) == [by_id[r["id"]]["images"] for r in sel.by_image["coco"] + sel.records["vqa"]]


def test_records_whose_meta_names_no_image_are_grouped_by_their_image_bytes(tmp_path):
    rows = [_rec("coco", "test", i, f"imported {i}", images=[b"shared image"]) for i in range(3)]
    rows += [_rec("coco", "test", 10 + i, f"other {i}", images=[b"other image"]) for i in range(2)]
    _write(tmp_path, "test", rows, n_files=2, row_group_size=2)
    sel = select_evaluation_records(str(tmp_path), ["coco"], limit=1, by_image_tasks=["coco"])
    assert [r["outputs"] for r in sel.by_image["coco"]] == ["imported 0", "imported 1", "imported 2"]


def test_reads_an_s3_data_dir(s3_endpoint):
    """The driver selects rows and a prediction actor reads their images by URL, from object storage too."""
    from ying import storage

    bucket = s3_endpoint("ying-eval-records")
    rows = [_rec("vqa", "test", i, f"a{i}") for i in range(6)]
    train = [_rec("vqa", "train", i, "red" if i % 3 else "blue", instruction=f"I{i % 2}") for i in range(9)]
    for split, part in (("test", rows), ("train", train)):
        fs, path = storage.filesystem(f"{bucket}/qc/records/{split}/part-0.parquet")
        with fs.open(path, "wb") as f:
            pq.write_table(pa.Table.from_pylist(part, schema=RECORD_SCHEMA), f, row_group_size=4)
    sel = select_evaluation_records(f"{bucket}/qc", ["vqa"], limit=3)
    assert [r["id"] for r in sel.records["vqa"]] == [f"vqa-test-{i:04d}" for i in range(3)]
    assert all(r["image_ref"]["file"].startswith("s3://ying-eval-records/") for r in sel.records["vqa"])
    assert read_images([r["image_ref"] for r in sel.records["vqa"]]) == [r["images"] for r in rows[:3]]
    summary = training_summary(f"{bucket}/qc")
    assert summary.majority == {"vqa": "red"} and summary.instructions == {"vqa": {"I0", "I1"}}
