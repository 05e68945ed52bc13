"""The laion adapter: img2dataset's webdataset shards, read with Ray Data and built by the real unify."""

import hashlib
import io
import json
import os
import random
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ying.config import MiniWorldConfig, load_config
from ying.data.build import build_unified, build_dataset_batch, reads_dataset, sample_key
from ying.data.instructions import load_pool, pick_instruction
from ying.data.miniworld import generate_miniworld
from ying.data.miniworld.laion import PARQUET_SCHEMA
from ying.data.miniworld.scenes import captions_en, draw_scene, encode_jpeg, random_scene
from ying.data.records import read_records, read_rejects
from ying.data.schema import Reject, SourceInstance
from ying.data.tasks import get_task
from ying.data.tasks.laion import sample_item

TASK = "laion"


def _member(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shard(root, shard, samples):
    """``samples``: (key, {suffix: bytes}) in tar order; the parquet beside it lists every key."""
    with tarfile.open(os.path.join(root, f"{shard}.tar"), "w") as tar:
        for key, members in samples:
            for suffix, data in members.items():
                _member(tar, f"{key}.{suffix}", data)
    rows = [{"url": f"https://x.invalid/{key}.jpg", "caption": m.get("txt", b"").decode("utf-8", "replace"),
             "key": key, "status": "success", "error_message": None, "width": 64, "height": 64,
             "original_width": 64, "original_height": 64, "exif": None, "sha256": None} for key, m in samples]
    pq.write_table(pa.Table.from_pylist(rows, schema=PARQUET_SCHEMA), os.path.join(root, f"{shard}.parquet"))


def good(rng, key):
    scene = random_scene(rng, 64)
    caption = captions_en(scene)[0]
    jpg = encode_jpeg(draw_scene(scene))
    return key, {"jpg": jpg, "json": json.dumps({"url": f"https://x.invalid/{key}.jpg", "key": key}).encode(),
                 "txt": caption.encode()}


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """Two shards: 7 good samples and three bad ones (no .jpg, an empty caption, a JPEG that doesn't decode)."""
    root = str(tmp_path_factory.mktemp("laion"))
    rng = random.Random(7)
    shard0 = [good(rng, "000000000"), good(rng, "000000001"),
              ("000000002", {"json": b"{}", "txt": b"a caption without its picture"}),
              good(rng, "000000003"),
              ("000000004", {"jpg": good(rng, "x")[1]["jpg"], "json": b"{}", "txt": b"  \n"})]
    broken = good(rng, "000010001")
    broken[1]["jpg"] = broken[1]["jpg"][:40] + b"\x00not a jpeg" * 20
    shard1 = [good(rng, "000010000"), broken, good(rng, "000010002"), good(rng, "000010003"), good(rng, "000010005")]
    write_shard(root, "00000", shard0)
    write_shard(root, "00001", shard1)
    expected = {key: m for key, m in shard0 + shard1 if key not in ("000000002", "000000004", "000010001")}
    return root, expected


@pytest.fixture(scope="module")
def built(release, tmp_path_factory, ray_cluster):
    root, expected = release
    cfg = load_config("tiny", overrides=["data.tasks=[laion]", "data.held_out=[]", "run.seed=3"])
    out = str(tmp_path_factory.mktemp("unified"))
    return cfg, out, build_unified(cfg, {TASK: root}, out)


def test_spec_and_dispatch():
    spec = get_task(TASK).SPEC
    assert (spec.category, spec.lang, spec.splits, spec.rephrase, spec.stage2_mix) == (
        "captioning", "en", ("train",), False, False)
    assert reads_dataset(TASK) and not reads_dataset("coco")
    assert len(load_pool(TASK)) == 10


def test_read_instances_says_laion_is_read_as_a_dataset(tmp_path):
    with pytest.raises(NotImplementedError, match="read as a Ray Dataset"):
        list(get_task(TASK).read_instances(str(tmp_path), "train"))


def test_counts_reconcile_per_reason(built):
    _, _, stats = built
    c = stats[TASK]["train"]
    assert set(stats[TASK]) == {"train"}
    assert (c["read"], c["written"], c["rejected"], c["offered"]) == (10, 7, 3, 8)  # the broken JPEG is an instance
    assert c["read"] == c["written"] + c["rejected"]


def test_each_reject_names_its_sample_and_reason(built, release):
    root, _ = release
    _, out, _ = built
    rejects = read_rejects(out)
    assert [r["source"] for r in rejects] == [f"{root}/00000.tar#000000002", f"{root}/00000.tar#000000004",
                                              f"{root}/00001.tar#000010001"]  # in source order
    reasons = [r["reason"] for r in rejects]
    assert "no .jpg member" in reasons[0]
    assert reasons[1] == "empty caption"
    assert reasons[2].startswith(f"{root}/00001.tar#000010001.jpg: image does not decode")
    assert all(r["task"] == TASK and r["split"] == "train" for r in rejects)


def test_records_carry_the_captions_and_the_image_bytes_in_train_only(built, release):
    root, expected = release
    cfg, out, _ = built
    rows = read_records(out, "train")
    assert {r["id"] for r in rows} == {f"laion-train-{k}" for k in expected}
    for r in rows:
        key = json.loads(r["meta"])["key"]
        assert r["outputs"] == expected[key]["txt"].decode() and r["inputs"] == ""
        assert r["images"] == [expected[key]["jpg"]]  # the tar member's bytes, as-is
        meta = json.loads(r["meta"])
        assert meta["source"] == f"{'00000' if key < '00001' else '00001'}.tar#{key}"
        assert meta["url"] == f"https://x.invalid/{key}.jpg"
        assert meta["image_sha256"] == [hashlib.sha256(expected[key]["jpg"]).hexdigest()]
        assert (r["category"], r["lang"]) == ("captioning", "en")
        assert r["instruction"] == pick_instruction(TASK, r["id"], 3, n_instructions=cfg.data.train_instructions)
    assert read_records(out, "validation") == [] and read_records(out, "test") == []
    # one records file per shard, named by its first sample
    assert sorted(os.listdir(os.path.join(out, "records", "train"))) == [
        "laion-train-00000.tar-000000000.parquet", "laion-train-00001.tar-000010000.parquet"]


def test_a_rebuild_writes_the_same_files(built, release, tmp_path):
    cfg, out, stats = built
    again = str(tmp_path / "again")
    assert build_unified(cfg, {TASK: release[0]}, again) == stats
    digest = lambda d: {f: hashlib.sha256(open(os.path.join(d, f), "rb").read()).hexdigest()  # noqa: E731
                        for f in os.listdir(d)}
    assert digest(os.path.join(out, "records", "train")) == digest(os.path.join(again, "records", "train"))
    assert read_rejects(again) == read_rejects(out)


def test_max_per_split_samples_the_smallest_keys_as_listed_tasks_do(release, ray_cluster, tmp_path):
    root, expected = release
    cfg = load_config("tiny", overrides=["data.tasks=[laion]", "data.held_out=[]", "data.max_per_split=3"])
    stats = build_unified(cfg, {TASK: root}, str(tmp_path))
    instances = sorted(expected) + ["000010001"]  # the broken JPEG is an instance until it is built
    kept = sorted(instances, key=lambda k: sample_key(cfg.run.seed, TASK, "train", k))[:3]
    c = stats[TASK]["train"]
    assert c["offered"] == 8 and c["read"] == 3 + 2 == c["written"] + c["rejected"]  # and both adapter rejects
    built_ids = {r["id"] for r in read_records(str(tmp_path), "train")}
    rejected = {r["source"].rsplit("#", 1)[1] for r in read_rejects(str(tmp_path))} - {"000000002", "000000004"}
    assert built_ids | {f"laion-train-{k}" for k in rejected} == {f"laion-train-{k}" for k in kept}


def test_no_shards_is_one_reject(ray_cluster, tmp_path):
    cfg = load_config("tiny", overrides=["data.tasks=[laion]", "data.held_out=[]"])
    (tmp_path / "empty").mkdir()
    stats = build_unified(cfg, {TASK: str(tmp_path / "empty")}, str(tmp_path / "out"))
    assert stats[TASK]["train"]["rejected"] == stats[TASK]["train"]["read"] == 1
    assert "no webdataset shards" in read_rejects(str(tmp_path / "out"))[0]["reason"]


def test_a_truncated_shard_is_one_reject_naming_it_and_the_others_build(release, ray_cluster, tmp_path):
    root, _ = release
    cut = str(tmp_path / "cut")
    os.makedirs(cut)
    for name in os.listdir(root):
        data = open(os.path.join(root, name), "rb").read()
        if name == "00001.tar":  # cut at a block boundary inside a member: only the missing end says so
            data = data[:2048]
        open(os.path.join(cut, name), "wb").write(data)
    cfg = load_config("tiny", overrides=["data.tasks=[laion]", "data.held_out=[]"])
    stats = build_unified(cfg, {TASK: cut}, str(tmp_path / "out"))
    assert (stats[TASK]["train"]["written"], stats[TASK]["train"]["rejected"]) == (3, 3)  # shard 0: 3 good, 2 bad
    rejects = read_rejects(str(tmp_path / "out"))
    assert rejects[-1] == {"task": TASK, "split": "train", "source": f"{cut}/00001.tar",
                           "reason": "shard is truncated: it lacks the tar's end-of-archive blocks"}


def test_sample_item_and_the_batch_builder_without_ray(tmp_path):
    rng = random.Random(0)
    _, m = good(rng, "k1")
    raw = {"key": "k1", "shard": "00003.tar", "members": "jpg,json,txt", "image_member": "jpg", "image": m["jpg"],
           "txt": m["txt"], "json": m["json"]}
    inst, image = sample_item(raw, "/r", "train")
    assert isinstance(inst, SourceInstance) and image == m["jpg"]
    assert inst.image_paths == ["/r/00003.tar#k1.jpg"] and inst.source == "/r/00003.tar#k1"
    assert inst.outputs == m["txt"].decode() and inst.meta["url"] == "https://x.invalid/k1.jpg"
    for change, reason in [({"txt": b"\xff\xfe"}, "caption is not UTF-8"),
                           ({"json": b"{nope"}, "metadata .json is not valid JSON"),
                           ({"members": "jpg,json", "txt": b""}, "no .txt member")]:
        item, _ = sample_item({**raw, **change}, "/r", "train")
        assert isinstance(item, Reject) and reason in item.reason, (change, item)
    # A batch builds with the same record code as listed tasks, images given as bytes
    row = {"source": inst.source, "reason": "", "instance": json.dumps(vars(inst)), "images": [image]}
    outcomes = build_dataset_batch([row, {"source": "/r/00003.tar#k2", "reason": "empty caption", "instance": "",
                                          "images": []}], TASK, "train", "/r", str(tmp_path), seed=0,
                                   frames_per_video=8, max_image_pixels=10**7)
    assert [o["reason"] for o in outcomes if o["reason"]] == ["empty caption"]
    assert sum(o["written"] for o in outcomes) == 1
    assert outcomes[-1]["listed"] == 2 and outcomes[-1]["offered"] == 1
    (record,) = read_records(str(tmp_path), "train")
    assert record["images"] == [image] and json.loads(record["meta"])["source"] == "00003.tar#k1"


# ------------------------------------------------------------------------------------------ mini-world


def _tree(root):
    return {os.path.relpath(os.path.join(d, f), root): hashlib.sha256(open(os.path.join(d, f), "rb").read()).hexdigest()
            for d, _, files in os.walk(root) for f in files}


def test_miniworld_release_is_img2dataset_shaped_deterministic_and_readable(ray_cluster, tmp_path):
    cfg = MiniWorldConfig(image_size=64, n_images={"laion/train": 30})
    root = generate_miniworld(str(tmp_path / "a"), cfg, seed=0, tasks=[TASK])[TASK]
    assert _tree(root) == _tree(generate_miniworld(str(tmp_path / "b"), cfg, seed=0, tasks=[TASK])[TASK])
    assert _tree(root) != _tree(generate_miniworld(str(tmp_path / "c"), cfg, seed=1, tasks=[TASK])[TASK])
    assert {f for f in os.listdir(root) if not f.startswith("_")} == {
        "00000.tar", "00000.parquet", "00000_stats.json", "00001.tar", "00001.parquet", "00001_stats.json"}
    scenes = json.load(open(os.path.join(root, "_miniworld", "scenes.json")))
    samples = {}
    for shard in ("00000", "00001"):
        table = pq.read_table(os.path.join(root, f"{shard}.parquet"))
        assert {"key", "caption", "url", "status", "error_message", "width", "height"} <= set(table.column_names)
        ok = {r["key"]: r for r in table.to_pylist() if r["status"] == "success"}
        assert len(ok) < table.num_rows  # failed downloads are listed too, and never in the tar
        names = tarfile.open(os.path.join(root, f"{shard}.tar")).getnames()
        assert names == [f"{k}.{s}" for k in sorted(ok) for s in ("jpg", "json", "txt")]
        samples.update({k: (shard, r) for k, r in ok.items()})
    assert len(samples) == 30
    rows = get_task(TASK).read_dataset(root, "train").take_all()
    assert len(rows) == 30 and not any(r["reason"] for r in rows)
    for r in rows:
        inst = json.loads(r["instance"])
        shard, meta = samples[inst["source_id"]]
        assert inst["outputs"] == meta["caption"] and inst["source"] == f"{root}/{shard}.tar#{meta['key']}"
        assert hashlib.sha256(r["images"][0]).hexdigest() == meta["sha256"]
        scene = scenes[f"{shard}.tar#{meta['key']}.jpg"]
        things = [f"a {s['color']} {s['kind']}" for s in scene["shapes"]]
        assert all(t in inst["outputs"] for t in things) and scene["background"] in inst["outputs"]  # true of it
