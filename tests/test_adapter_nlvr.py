import json
import os

from ying.data.instructions import load_pool
from ying.data.schema import Reject, SourceInstance
from ying.data.tasks import get_task

ROOT = os.path.join(os.path.dirname(__file__), "fixtures", "nlvr")
mod = get_task("nlvr")


def read(split):
    items = list(mod.read_instances(ROOT, split))
    assert all(isinstance(i, (SourceInstance, Reject)) for i in items)
    return [i for i in items if isinstance(i, SourceInstance)], [i for i in items if isinstance(i, Reject)]


def test_spec_and_pool():
    assert (mod.SPEC.category, mod.SPEC.lang, mod.SPEC.splits) == ("reasoning", "en", ("train", "validation", "test"))
    pool = load_pool("nlvr")
    assert len(pool) == 10 and len(set(pool)) == 10


def test_dev_matches_json_lines():
    path = os.path.join(ROOT, "dev.json")
    lines = open(path, encoding="utf-8").read().splitlines()
    records = [json.loads(l) for l in lines[:3]]
    good, bad = read("validation")
    assert len(good) == 2
    for inst, rec in zip(good, records[:2]):
        stem = rec["identifier"].rsplit("-", 1)[0]
        assert inst.split == "validation" and inst.source_id == rec["identifier"]
        assert inst.inputs == rec["sentence"] and inst.outputs == rec["label"].lower()
        assert inst.meta["original_answer"] == rec["label"].lower() and inst.meta["label"] == rec["label"]
        assert inst.image_paths == [os.path.join(ROOT, "images", "dev", f"{stem}-img{k}.png") for k in (0, 1)]
        assert inst.meta["left_url"] == rec["left_url"] and inst.meta["right_url"] == rec["right_url"]
    assert [r.source for r in bad] == [f"{path}:3", f"{path}:4", f"{path}:5"]
    assert "missing image file dev-851-2-img0.png" in bad[0].reason
    assert "'sentence'" in bad[1].reason
    assert "not valid JSON" in bad[2].reason


def test_train_directory_and_test1():
    good, bad = read("train")
    assert not bad and good[0].image_paths[0] == os.path.join(ROOT, "images", "train", "7", "train-10-1-img0.png")
    assert good[0].outputs == "false"
    good, bad = read("test")
    assert not bad and good[0].source_id == "test1-5-3-1" and good[0].image_paths[1].endswith("test1-5-3-img1.png")
