import json
import os

import av

from ying.data.instructions import load_pool
from ying.data.schema import Reject, SourceInstance
from ying.data.tasks import get_task
from ying.data.tasks.ss import MAX_OPTIONS

ROOT = os.path.join(os.path.dirname(__file__), "fixtures", "ss")
TASK = "ss"
FILES = {"train": "something-something-v2-train.json", "validation": "something-something-v2-validation.json"}


def read(split):
    items = list(get_task(TASK).read_instances(ROOT, split))
    assert all(isinstance(i, (SourceInstance, Reject)) for i in items)
    return [i for i in items if isinstance(i, SourceInstance)], [i for i in items if isinstance(i, Reject)]


def test_spec_and_pool():
    spec = get_task(TASK).SPEC
    assert (spec.category, spec.lang, spec.splits, spec.rephrase) == ("video", "en", ("train", "validation"), False)
    pool = load_pool(TASK)
    assert len(pool) == 10 and len(set(pool)) == 10


def test_records_match_release_files():
    labels = json.load(open(os.path.join(ROOT, "something-something-v2-labels.json")))
    letters = set()
    for split, name in FILES.items():
        raw = json.load(open(os.path.join(ROOT, name)))
        expected = [r for r in raw if r["template"].replace("[", "").replace("]", "") in labels
                    and os.path.exists(os.path.join(ROOT, "20bn-something-something-v2", r["id"] + ".webm"))]
        good, _ = read(split)
        assert len(good) == len(expected) > 0
        for inst, r in zip(good, expected):
            gold = r["template"].replace("[", "").replace("]", "")
            assert inst.split == split and inst.source_id == r["id"]
            assert inst.video_path == os.path.join(ROOT, "20bn-something-something-v2", r["id"] + ".webm")
            assert inst.image_paths == [] and inst.boxes is None
            options = inst.meta["options"]
            assert gold in options and len(options) == MAX_OPTIONS and set(options) <= set(labels)
            letter = "ABCDEFGHIJ"[options.index(gold)]
            assert inst.outputs == f"({letter}) {gold}" and inst.inputs.startswith("Options: (A) ")
            assert f"({letter}) {gold}" in inst.inputs
            assert inst.meta["class_index"] == labels[gold] and inst.meta["label"] == r["label"]
            assert inst.meta["template"] == r["template"] and inst.meta["placeholders"] == r["placeholders"]
            letters.add(letter)
    assert len(letters) > 1


def test_fixture_videos_decode():
    with av.open(os.path.join(ROOT, "20bn-something-something-v2", "78687.webm")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 10


def test_bad_records_are_rejected():
    good, bad = read("train")
    assert len(good) == 2 and len(bad) == 2
    assert bad[0].source.endswith("something-something-v2-train.json#[2]")
    assert "missing video file 20bn-something-something-v2/100904.webm" in bad[0].reason
    assert bad[1].source.endswith("#[3]") and "not a class in something-something-v2-labels.json" in bad[1].reason
