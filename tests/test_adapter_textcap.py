import json
import os

from ying.data.instructions import load_pool
from ying.data.schema import Reject, SourceInstance
from ying.data.tasks import get_task

ROOT = os.path.join(os.path.dirname(__file__), "fixtures", "textcap")


def run(split):
    items = list(get_task("textcap").read_instances(ROOT, split))
    return [i for i in items if isinstance(i, SourceInstance)], [i for i in items if isinstance(i, Reject)]


def test_spec_and_pool():
    spec = get_task("textcap").SPEC
    assert (spec.category, spec.lang, spec.splits, spec.rephrase) == ("captioning", "en", ("train", "validation"), False)
    pool = load_pool("textcap")
    assert len(pool) == 10 and len(set(pool)) == 10


def test_records_match_raw_file():
    for split, name in (("train", "TextCaps_0.1_train.json"), ("validation", "TextCaps_0.1_val.json")):
        raw = json.load(open(os.path.join(ROOT, name)))["data"]
        have = set(os.listdir(os.path.join(ROOT, "train_images")))
        expected = [d for d in raw if "caption_str" in d and f"{d['image_id']}.jpg" in have]
        good, _ = run(split)
        assert len(good) == len(expected) > 0
        for inst, d in zip(good, expected):
            assert inst.split == split and inst.task == "textcap" and inst.inputs == ""
            assert inst.outputs == d["caption_str"]
            assert inst.image_paths == [os.path.join(ROOT, "train_images", f"{d['image_id']}.jpg")]
            assert inst.source_id == f"{d['image_id']}-{d['caption_id']}"
            assert inst.meta["image_id"] == d["image_id"] and inst.meta["reference_strs"] == d["reference_strs"]
            assert inst.boxes is None and inst.video_path is None
    good, _ = run("train")
    assert len({i.source_id for i in good}) == len(good)


def test_bad_records_are_rejected():
    _, bad = run("train")
    assert len(bad) == 2
    assert all("TextCaps_0.1_train.json#data[" in r.source for r in bad)
    assert "missing image file train_images/ffffffffffffffff.jpg" in bad[0].reason and bad[0].source.endswith("data[3]")
    assert "caption_str" in bad[1].reason and bad[1].source.endswith("data[4]")
    assert not run("validation")[1]


def test_missing_annotation_file(tmp_path):
    items = list(get_task("textcap").read_instances(str(tmp_path), "train"))
    assert len(items) == 1 and isinstance(items[0], Reject)
    assert "missing file" in items[0].reason and items[0].source.endswith("TextCaps_0.1_train.json")
