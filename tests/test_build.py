import hashlib
import io
import json
import os
import shutil

import pyarrow.parquet as pq
import pytest
from PIL import Image

from ying.config import load_config
from ying.data.build import build_unified, build_unified_local, iter_listing, materialize_record, reject_kind, sample_key
from ying.data.records import read_records, read_rejects, read_split
from ying.data.miniworld import generate_miniworld
from ying.data.qc import check_records
from ying.data.schema import RECORD_SCHEMA, validate_record
from ying.data.tasks import get_task

from test_miniworld import TASKS as ALL, small_cfg


@pytest.fixture(scope="module")
def built(tmp_path_factory, ray_cluster):
    base = tmp_path_factory.mktemp("build")
    # The mini-world's listed tasks (laion, read as a Ray Dataset, is test_adapter_laion's)
    cfg = load_config("tiny", overrides=["run.seed=5", f"data.tasks=[{','.join(ALL)}]"])
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
            assert c["read"] <= c["listed"] == c["written"] + c["rejected"], (task, split, c)
            total_written[split] = total_written.get(split, 0) + c["written"]
    for split, n in total_written.items():
        assert len(read_records(out, split)) == n
    assert stats["vqa-v2"]["train"]["rejected"] == sum(
        3 for _ in broken)  # every question on the two broken images
    assert stats["coco"]["train"]["written"] == 10
    # read counts source records: a LLaVA conversation once, however many rounds (records) it gives
    llava = stats["llava"]["train"]
    assert llava["read"] == small_cfg(5).n_images["llava/train"] < llava["listed"] == llava["written"]
    assert stats["coco"]["train"]["read"] == stats["coco"]["train"]["listed"]


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
    raw = open(os.path.join(built[1]["vqa-v2"], "train2014", "COCO_train2014_%012d.jpg" % src["image_id"]), "rb").read()
    assert vqa["images"][0] == raw  # no box: bytes as-is
    for r in rows:  # the build states the digest of every image it decoded (QC need not decode again)
        assert json.loads(r["meta"])["image_sha256"] == [hashlib.sha256(b).hexdigest() for b in r["images"]]


def test_meta_source_names_the_file_relative_to_the_source_root(built):
    _, roots, out, _, _ = built
    for split in ("train", "validation"):
        for r in read_records(out, split, ["vqa-v2"]):
            source = json.loads(r["meta"])["source"]
            assert source.startswith(f"v2_OpenEnded_mscoco_{'train' if split == 'train' else 'val'}2014_questions.json#questions[")
            assert roots["vqa-v2"] not in r["meta"]
    # rejects keep the full path: a person has to open that file
    assert all(r["source"].startswith(roots[r["task"]]) for r in read_rejects(out))


def test_the_same_sources_elsewhere_give_the_same_records(tmp_path):
    """meta.source is relative: copying the releases to another directory changes no record."""
    cfg = load_config("tiny", overrides=["data.tasks=[coco,coco-goi]", "data.held_out=[]"])
    a = generate_miniworld(str(tmp_path / "machine-a"), small_cfg(3), seed=0, tasks=["coco", "coco-goi"])
    b = {t: str(tmp_path / "elsewhere" / "b" / t) for t in a}
    for t in a:
        shutil.copytree(a[t], b[t])
    build_unified_local(cfg, a, str(tmp_path / "ua"))
    build_unified_local(cfg, b, str(tmp_path / "ub"))
    for split in ("train", "validation"):
        assert read_records(str(tmp_path / "ua"), split) == read_records(str(tmp_path / "ub"), split)


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
    qc = check_records(str(tmp_path / "in"), str(tmp_path / "out"), use_ray=False)
    assert (qc["checked"], qc["passed"], qc["rejected"]) == (3, 1, 2)
    assert [r["id"] for r in read_records(str(tmp_path / "out"), "train")] == ["t-train-1"]
    reasons = {r["id"]: r["reason"] for r in map(json.loads, (tmp_path / "out" / "rejects.jsonl").read_text().splitlines())}
    assert reasons["t-train-2"] == "empty output" and "image 0" in reasons["t-train-3"]


def test_qc_decodes_only_the_images_the_build_did_not_vouch_for(tmp_path):
    import pyarrow as pa

    def png(c):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), c).save(buf, "PNG")
        return buf.getvalue()

    good, other = png((1, 2, 3)), png((4, 5, 6))
    sha = lambda b: hashlib.sha256(b).hexdigest()  # noqa: E731
    base = {"task": "coco", "category": "captioning", "lang": "en", "split": "train", "instruction": "Describe it.",
            "inputs": "", "outputs": "a square"}
    rows = [{**base, "id": "vouched", "images": [good], "meta": json.dumps({"image_sha256": [sha(good)]})},
            # bytes changed after the build: the statement no longer matches, so QC decodes (and rejects)
            {**base, "id": "changed", "images": [b"\x89PNG broken"], "meta": json.dumps({"image_sha256": [sha(good)]})},
            {**base, "id": "imported", "images": [other], "meta": "{}"}]  # no statement: decoded
    (tmp_path / "in" / "records" / "train").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA), tmp_path / "in" / "records" / "train" / "a.parquet")
    qc = check_records(str(tmp_path / "in"), str(tmp_path / "out"), use_ray=False)
    assert (qc["images_decoded"], qc["images_spared"], qc["rejected"]) == (2, 1, 1)
    assert [r["id"] for r in read_records(str(tmp_path / "out"), "train")] == ["vouched", "imported"]
    qc = check_records(str(tmp_path / "in"), str(tmp_path / "out2"), use_ray=False, trust_build=False)
    assert (qc["images_decoded"], qc["images_spared"]) == (3, 0)


def test_bomb_limit(tmp_path):
    roots = generate_miniworld(str(tmp_path), small_cfg(3), seed=0, tasks=["coco"])
    inst = next(get_task("coco").read_instances(roots["coco"], "train"))
    rej = materialize_record(inst.__dict__, seed=0, frames_per_video=8, max_image_pixels=1000)
    assert "max_image_pixels" in rej["reason"] and rej["source"] == inst.source


def test_max_per_split_draws_a_seeded_random_sample_not_the_first_records(ray_cluster, tmp_path):
    roots = generate_miniworld(str(tmp_path / "s"), small_cfg(20), seed=0, tasks=["coco"])

    def sample(seed, build=build_unified_local):
        cfg = load_config("tiny", overrides=["data.max_per_split=5", "data.tasks=[coco]", "data.held_out=[]",
                                             f"run.seed={seed}"])
        out = str(tmp_path / f"u{seed}")
        stats = build(cfg, roots, out)
        assert all(c["read"] == c["written"] == 5 for c in stats["coco"].values())
        assert stats["coco"]["train"]["offered"] == 40  # 20 images x 2 captions: the pool sampled from
        return [r["id"] for r in read_records(out, "train")]

    first = [f"coco-train-{i.source_id}" for i in get_task("coco").read_instances(roots["coco"], "train")][:5]
    a, b = sample(0, build_unified), sample(1)  # on Ray Data, and in one process: the same listing code
    assert sorted(a) != sorted(first)  # not the first five
    assert sorted(a) != sorted(b)  # the seed draws another sample
    assert sample(0) == a  # and the same seed the same one


class _ManyRecords:
    """An adapter module stand-in: ``n`` instances and a reject every 1,000th record."""

    def __init__(self, n):
        self.n = n
        self.SPEC = get_task("coco").SPEC

    def read_instances(self, root, split):
        from ying.data.schema import Reject, SourceInstance

        for i in range(self.n):
            if i % 1000 == 999:
                yield Reject("coco", split, f"{root}/a.json#[{i}]", "missing field 'x'")
            else:
                yield SourceInstance("coco", split, f"s{i}", f"{root}/a.json#[{i}]", "", f"caption {i}", [f"{root}/{i}.jpg"])


def test_the_sample_is_the_bottom_k_of_a_seeded_hash_kept_in_a_heap_of_k(monkeypatch):
    import ying.data.build as build

    monkeypatch.setattr(build, "get_task", lambda task: _ManyRecords(20_000))
    tally = {}
    rows = list(iter_listing("coco", "/r", "train", cap=50, seed=7, tally=tally))
    rejects = [r for r in rows if r["kind"] == "reject"]
    kept = [r for r in rows if r["kind"] == "instance"]
    assert len(rejects) == 20 and len(kept) == 50 and tally["offered"] == 20_000 - 20
    ids = [json.loads(r["instance"])["source_id"] for r in kept]
    every = sorted((sample_key(7, "coco", "train", f"s{i}"), f"s{i}") for i in range(20_000) if i % 1000 != 999)
    assert sorted(ids) == sorted(i for _, i in every[:50])  # exactly the 50 smallest keys
    assert [r["index"] for r in kept] == sorted(r["index"] for r in kept)  # in source order
    assert max(r["index"] for r in kept) > 10_000  # drawn from the whole stream
    # Growing the release only changes the sample where the new records land.
    monkeypatch.setattr(build, "get_task", lambda task: _ManyRecords(10_000))
    half = {json.loads(r["instance"])["source_id"] for r in iter_listing("coco", "/r", "train", cap=50, seed=7)
            if r["kind"] == "instance"}
    assert {i for i in ids if int(i[1:]) < 10_000} <= half


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


def test_listing_runs_as_one_cpu_ray_tasks_one_per_task_and_split(built, ray_cluster):
    from ray.util.state import list_tasks

    cfg = built[0]
    tasks = list_tasks(address=ray_cluster.dashboard_url, filters=[("func_or_class_name", "=", "list_split")],
                       detail=True, limit=10_000)
    assert len({t["task_id"] for t in tasks}) >= sum(len(get_task(t).SPEC.splits) for t in cfg.data.tasks)
    assert all(t["required_resources"].get("CPU") == 1.0 for t in tasks)


def test_many_chunks_rebuild_in_place_without_duplicates(ray_cluster, tmp_path, capfd):
    # 4 instances per chunk (one build call each); progress every call
    cfg = load_config("tiny", overrides=["data.tasks=[coco,vqa-v2]", "data.held_out=[]", "data.chunk_rows=4",
                                         "data.progress_interval_s=0"])
    roots = generate_miniworld(str(tmp_path / "s"), small_cfg(4), seed=0, tasks=["coco", "vqa-v2"])
    out = str(tmp_path / "u")
    first = build_unified(cfg, roots, out)
    again = build_unified_local(cfg, roots, out)  # a rerun (same chunks, same file names) replaces the shards
    assert first == again
    train = read_records(out, "train")
    assert len(train) == len({r["id"] for r in train}) == first["coco"]["train"]["written"] + first["vqa-v2"]["train"]["written"]
    assert len(os.listdir(os.path.join(out, "records", "train"))) >= len(train) // 4
    # One progress line per step: done, total, rate, ETA (no control codes), the last one final.
    lines = [line for line in capfd.readouterr().out.splitlines() if line.startswith("[ying] unify: ")]
    total = sum(c["read"] for s in first.values() for c in s.values())
    assert any("ETA" in line for line in lines) and "\r" not in "".join(lines)
    assert lines[-1].startswith(f"[ying] unify: {total:,}/{total:,} records (100.0%)") and "0 rejected" in lines[-1]


def test_each_chunk_counts_its_records_in_the_metrics_as_it_ends(tmp_path, monkeypatch):
    """The build's actors bump ying_records_built / ying_records_rejected per chunk (tagged by task and
    a low-cardinality reject kind), not the stage once at the end."""
    import pyarrow as pa

    import ying.data.build as build
    from ying import telemetry

    class Recorder:
        def __init__(self):
            self.calls = []

        def inc(self, n, tags):
            self.calls.append((n, tags))

    built_counter, rejected_counter = Recorder(), Recorder()
    monkeypatch.setattr(telemetry, "records_counter", lambda: built_counter)
    monkeypatch.setattr(telemetry, "records_rejected_counter", lambda: rejected_counter)
    cfg = load_config("tiny", overrides=["data.tasks=[coco]", "data.held_out=[]", "data.chunk_rows=5"])
    roots = generate_miniworld(str(tmp_path / "s"), small_cfg(5), seed=0, tasks=["coco"])
    img = next(get_task("coco").read_instances(roots["coco"], "train")).image_paths[0]
    open(img, "wb").write(b"not a jpeg")
    listing = build.list_split("coco", roots["coco"], "train", None, 0, str(tmp_path / "l"), 5)
    assert len(listing["paths"]) == 2  # 10 captions in chunks of 5
    builder = build._ChunkBuilder()
    for n, path in enumerate(listing["paths"], start=1):
        builder(pa.table({"path": [path]}), **build._build_kwargs(cfg, str(tmp_path / "u")))
        assert len(built_counter.calls) == n  # counted as each chunk ends
    assert sum(c for c, _ in built_counter.calls) == 8 and {t["task"] for _, t in built_counter.calls} == {"coco"}
    assert rejected_counter.calls == [(2, {"task": "coco", "reason": "image does not decode"})]


def test_reject_kinds_are_short_and_free_of_paths_and_numbers():
    assert reject_kind("/d/train2014/x.jpg: image does not decode: UnidentifiedImageError") == "image does not decode"
    assert reject_kind("missing image file train2014/COCO_train2014_000000000001.jpg") == "missing image file <path>"
    assert reject_kind("box [50.0, 50.0, 40.0, 40.0] outside the 64x64 image") == "box [N.N, N.N, N.N, N.N] outside the NxN image"
    assert reject_kind("missing field 'question'") == "missing field 'question'"


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


def test_a_video_counts_as_frames_per_video_rows_toward_a_chunk(tmp_path):
    """A chunk of videos is about as much work as a chunk of images: a video weighs
    data.frames_per_video rows, so videos come in chunks of chunk_rows / frames_per_video; the rows
    listed are the same, in the same order, only cut into more chunks."""
    import pyarrow.parquet as pq

    from ying.data import build

    roots = generate_miniworld(str(tmp_path / "s"), small_cfg(5), seed=0, tasks=["msrvtt-qa"])
    args = ("msrvtt-qa", roots["msrvtt-qa"], "train", None, 0)
    plain = build.list_split(*args, str(tmp_path / "plain"), 16)
    weighted = build.list_split(*args, str(tmp_path / "weighted"), 16, None, 8)
    rows = lambda listing: [r for p in listing["paths"] for r in pq.read_table(p).to_pylist()]  # noqa: E731
    videos = [r for r in rows(weighted) if r["kind"] == "instance"]
    assert len(videos) >= 3 and all(json.loads(r["instance"])["video_path"] for r in videos)
    assert rows(weighted) == rows(plain) and weighted["listed"] == plain["listed"]
    assert [pq.read_metadata(p).num_rows for p in weighted["paths"]][:-1] == [2] * (len(weighted["paths"]) - 1)
    assert sum(weighted["weights"]) == 8 * len(videos) + (weighted["listed"] - len(videos))
    assert plain["weights"] == [plain["listed"]]  # under 16 rows: one chunk, as before
