import json
import os

from ying.data.instructions import load_pool
from ying.data.schema import Reject, SourceInstance
from ying.data.tasks import get_task

KEY = "image-paragraph-captioning"
ROOT = os.path.join(os.path.dirname(__file__), "fixtures", KEY)
SPLIT_FILES = {"train": "train_split.json", "validation": "val_split.json", "test": "test_split.json"}


def run(split):
    items = list(get_task(KEY).read_instances(ROOT, split))
    return [i for i in items if isinstance(i, SourceInstance)], [i for i in items if isinstance(i, Reject)]


def test_spec_and_pool():
    spec = get_task(KEY).SPEC
    assert (spec.category, spec.lang, spec.splits, spec.rephrase) == ("captioning", "en", ("train", "validation", "test"), False)
    pool = load_pool(KEY)
    assert len(pool) == 10 and len(set(pool)) == 10


def test_records_match_raw_files():
    pars = json.load(open(os.path.join(ROOT, "paragraphs_v1.json")))
    total = 0
    for split, name in SPLIT_FILES.items():
        ids = set(json.load(open(os.path.join(ROOT, name))))
        expected = []
        for p in pars:
            if p["image_id"] not in ids or "paragraph" not in p:
                continue
            folder, filename = p["url"].split("/")[-2:]
            if os.path.exists(os.path.join(ROOT, folder, filename)):
                expected.append((p, folder, filename))
        good, _ = run(split)
        assert len(good) == len(expected)
        total += len(good)
        for inst, (p, folder, filename) in zip(good, expected):
            assert inst.split == split and inst.inputs == ""
            assert inst.outputs == p["paragraph"].strip()
            assert inst.image_paths == [os.path.join(ROOT, folder, filename)]
            assert inst.source_id == str(p["image_id"]) and inst.meta["image_id"] == p["image_id"]
            assert inst.meta["url"] == p["url"]
    assert total == 3
    # both Visual Genome image folders are used, as the urls say
    assert {os.path.basename(os.path.dirname(i.image_paths[0])) for i in run("train")[0]} == {"VG_100K", "VG_100K_2"}


def test_bad_records_are_rejected():
    _, bad = run("train")
    assert len(bad) == 1 and bad[0].source.endswith("paragraphs_v1.json#[4]") and "paragraph" in bad[0].reason
    good, bad = run("test")
    assert not good and len(bad) == 1
    assert bad[0].source.endswith("paragraphs_v1.json#[3]") and "missing image file VG_100K_2/2400001.jpg" in bad[0].reason
    assert not run("validation")[1]
