import io
import json
import os

import pyarrow.parquet as pq
import pytest
from PIL import Image

from ying.config import load_config
from ying.data.build import (build_unified, build_unified_local, materialize_record, read_records, read_rejects,
                              read_split)
from ying.data.miniworld import generate_miniworld
from ying.data.qc import check_records
from ying.data.schema import RECORD_SCHEMA, validate_record
from ying.data.tasks import get_task

from test_miniworld import TASKS as ALL, small_cfg


@pytest.fixture(scope="module")
def built(tmp_path_factory, ray_cluster):
    base = tmp_path_factory.mktemp("build")
    cfg = load_config("tiny", overrides=["run.seed=5"])
    roots = generate_miniworld(str(base / "sources"), small_cfg(5), seed=0, tasks=ALL)
    # break two VQA images: a corrupt JPEG and an empty file
    qs = json.load(open(os.path.join(roots["vqa-v2"], "v2_OpenEnded_mscoco_train2014_questions.json")))["questions"]
    img = lambda q: os.path.join(roots["vqa-v2"], "train2014", "COCO_train2014_%012d.jpg" % q["image_id"])
    good_bytes = open(img(qs[0]), "rb").read()
    open(img(qs[0]), "wb").write(good_bytes[:20] + b"\x00garbage" * 50)
    open(img(qs[-1]), "wb").write(b"")
    broken_ids = {qs[0]["image_id"], qs[-1]["image_id"]}
    out = str(base / "unified")
    stats = build_unified(cfg, roots, out)
    return cfg, roots, out, stats, broken_ids


def test_counts_reconcile(built):
    cfg, roots, out, stats, broken = built
    assert set(stats) == set(ALL)
    total_written = {}
    for task, splits in stats.items():
        assert set(splits) == set(get_task(task).SPEC.splits)
        for split, c in splits.items():
            assert c["read"] == c["written"] + c["rejected"], (task, split, c)
            total_written[split] = total_written.get(split, 0) + c["written"]
    for split, n in total_written.items():
        assert len(read_records(out, split)) == n
    assert stats["vqa-v2"]["train"]["rejected"] == sum(
        3 for _ in broken)  # every question on the two broken images
    assert stats["coco"]["train"]["written"] == 10


def test_parquet_has_record_schema(built):
    _, _, out, _, _ = built
    for split in ("train", "validation", "test"):
        files = [f for f in os.listdir(os.path.join(out, "records", split)) if f.endswith(".parquet")]
        assert files
        for f in files:
            assert pq.read_schema(os.path.join(out, "records", split, f)).remove_metadata() == RECORD_SCHEMA


def test_records_are_valid_and_true(built):
    _, _, out, _, _ = built
    rows = read_records(out, "train")
    assert {r["task"] for r in rows} == set(ALL)
    for r in rows:
        assert validate_record(r) is None
        meta = json.loads(r["meta"])
        assert meta["original_answer"] == r["outputs"] and "source_id" in meta
        if r["task"] == "msrvtt-qa":
            assert len(r["images"]) == 8 and meta["frames"] == 8
        else:
            assert len(r["images"]) == 1
    goi = next(r for r in rows if r["task"] == "coco-goi")
    x, y, w, h = json.loads(goi["meta"])["boxes"][0]
    im = Image.open(io.BytesIO(goi["images"][0])).convert("RGB")
    p = im.getpixel((int(x + w // 2), int(y)))
    assert p[0] > 200 and p[1] < 70 and p[2] < 70  # the red box on the region's top edge
    vqa = next(r for r in rows if r["task"] == "vqa-v2")
    src = json.loads(vqa["meta"])
    raw = open(os.path.join(os.path.dirname(os.path.dirname(src["source"].split("#")[0])), "vqa-v2", "train2014",
                            "COCO_train2014_%012d.jpg" % src["image_id"]), "rb").read()
    assert vqa["images"][0] == raw  # no box: bytes as-is


def test_bad_images_rejected_with_reason(built):
    _, _, out, stats, broken = built
    rejects = read_rejects(out)
    vqa = [r for r in rejects if r["task"] == "vqa-v2"]
    assert len(vqa) == stats["vqa-v2"]["train"]["rejected"]
    reasons = " | ".join(r["reason"] for r in vqa)
    assert "empty image file" in reasons and "does not decode" in reasons
    assert all(set(r) == {"task", "split", "source", "reason"} and r["source"] for r in rejects)


def test_read_split_and_qc(built):
    _, _, out, stats, _ = built
    ds = read_split(out, "validation", tasks=["coco", "vqa-v2"])
    assert ds.count() == stats["coco"]["validation"]["written"] + stats["vqa-v2"]["validation"]["written"]
    qc_dir = out + "-qc"
    qc = check_records(out, qc_dir)
    # the only rejects: visual-dialog training dialogs on OK-VQA's val2014 images (the contamination guard)
    assert qc["checked"] == qc["passed"] + qc["rejected"] and qc["rejected"] == sum(qc["contamination_blocked"].values())
    assert set(qc["contamination_blocked"]) == {"visual-dialog"}
    assert qc["checked"] == sum(c["written"] for s in stats.values() for c in s.values())
    assert len(read_records(qc_dir, "validation")) == len(read_records(out, "validation"))


def test_qc_sets_aside_a_bad_record_and_keeps_the_rest(tmp_path):
    import pyarrow as pa

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buf, "PNG")
    good = {"id": "t-train-1", "task": "coco", "category": "captioning", "lang": "en", "split": "train",
            "images": [buf.getvalue()], "instruction": "Describe it.", "inputs": "", "outputs": "a square",
            "meta": "{}"}
    bad = {**good, "id": "t-train-2", "outputs": "  "}
    broken = {**good, "id": "t-train-3", "images": [b"not an image"]}
    (tmp_path / "in" / "records" / "train").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([good, bad, broken], schema=RECORD_SCHEMA),
                   tmp_path / "in" / "records" / "train" / "part-0.parquet")
    qc = check_records(str(tmp_path / "in"), str(tmp_path / "out"))
    assert (qc["checked"], qc["passed"], qc["rejected"]) == (3, 1, 2)
    assert [r["id"] for r in read_records(str(tmp_path / "out"), "train")] == ["t-train-1"]
    reasons = {r["id"]: r["reason"] for r in map(json.loads, (tmp_path / "out" / "rejects.jsonl").read_text().splitlines())}
    assert reasons["t-train-2"] == "empty output" and "image 0" in reasons["t-train-3"]


def test_max_per_split_and_bomb_limit(tmp_path):
    roots = generate_miniworld(str(tmp_path), small_cfg(3), seed=0, tasks=["coco"])
    inst = next(get_task("coco").read_instances(roots["coco"], "train"))
    rej = materialize_record(inst.__dict__, seed=0, frames_per_video=8, max_image_pixels=1000)
    assert "max_image_pixels" in rej["reason"] and rej["source"] == inst.source


def test_max_per_split_caps(ray_cluster, tmp_path):
    cfg = load_config("tiny", overrides=["data.max_per_split=2", "data.tasks=[coco]", "data.held_out=[]"])
    roots = generate_miniworld(str(tmp_path / "s"), small_cfg(3), seed=0, tasks=["coco"])
    stats = build_unified(cfg, roots, str(tmp_path / "u"))
    assert all(c["read"] == 2 and c["written"] == 2 for c in stats["coco"].values())


def test_local_build_gives_the_same_records_rejects_and_counts(built, tmp_path):
    """The plain one-process build (the benchmark's baseline) is the same build: same outputs."""
    cfg, roots, out, stats, _ = built
    local = str(tmp_path / "local")
    assert build_unified_local(cfg, roots, local) == stats
    for split in ("train", "validation", "test"):
        by_id = lambda rows: {r["id"]: r for r in rows}  # noqa: E731
        assert by_id(read_records(local, split)) == by_id(read_records(out, split))
    assert read_rejects(local) == read_rejects(out)
    # only the documented layout is left behind: no listing chunks
    assert sorted(os.listdir(out)) == ["records", "rejects"] == sorted(os.listdir(local))


def test_many_chunks_rebuild_in_place_without_duplicates(ray_cluster, tmp_path, monkeypatch):
    import ying.data.build as build

    monkeypatch.setattr(build, "_CHUNK_ROWS", 4)  # chunks are cut in the driver: 4 instances per Ray task
    cfg = load_config("tiny", overrides=["data.tasks=[coco,vqa-v2]", "data.held_out=[]"])
    roots = generate_miniworld(str(tmp_path / "s"), small_cfg(9), seed=0, tasks=["coco", "vqa-v2"])
    out = str(tmp_path / "u")
    first = build_unified(cfg, roots, out)
    again = build_unified(cfg, roots, out)  # a rerun replaces the shards, never adds to them
    assert first == again
    train = read_records(out, "train")
    assert len(train) == len({r["id"] for r in train}) == first["coco"]["train"]["written"] + first["vqa-v2"]["train"]["written"]
    assert len(os.listdir(os.path.join(out, "records", "train"))) >= len(train) // 4


def test_an_instance_that_crashes_is_rejected_and_the_run_completes(tmp_path, monkeypatch):
    import ying.data.build as build

    cfg = load_config("tiny", overrides=["data.tasks=[coco]", "data.held_out=[]"])
    roots = generate_miniworld(str(tmp_path / "s"), small_cfg(5), seed=0, tasks=["coco"])
    real = build.materialize_record

    def flaky(inst, *a, **k):
        if inst["source_id"].endswith("3"):
            raise KeyError("boom")
        return real(inst, *a, **k)

    monkeypatch.setattr(build, "materialize_record", flaky)
    stats = build_unified_local(cfg, roots, str(tmp_path / "u"))
    rejects = read_rejects(str(tmp_path / "u"))
    assert rejects and all("build failed: KeyError" in r["reason"] and r["source"] for r in rejects)
    assert sum(c["rejected"] for c in stats["coco"].values()) == len(rejects)
    assert all(c["read"] == c["written"] + c["rejected"] for c in stats["coco"].values())


def test_counts_that_do_not_reconcile_fail_loudly(tmp_path, monkeypatch):
    import ying.data.build as build

    cfg = load_config("tiny", overrides=["data.tasks=[coco]", "data.held_out=[]"])
    roots = generate_miniworld(str(tmp_path / "s"), small_cfg(3), seed=0, tasks=["coco"])
    real = build.build_chunk
    monkeypatch.setattr(build, "build_chunk", lambda rows, *a: real(rows[:-2], *a))  # a chunk loses records
    with pytest.raises(RuntimeError, match="don't reconcile"):
        build_unified_local(cfg, roots, str(tmp_path / "u"))
