import json
import os

from ying.data.instructions import load_pool
from ying.data.schema import Reject, SourceInstance
from ying.data.tasks import get_task

KEY = "coco-text"
ROOT = os.path.join(os.path.dirname(__file__), "fixtures", KEY)


def run(split):
    items = list(get_task(KEY).read_instances(ROOT, split))
    return [i for i in items if isinstance(i, SourceInstance)], [i for i in items if isinstance(i, Reject)]


def test_spec_and_pool():
    spec = get_task(KEY).SPEC
    assert (spec.category, spec.lang, spec.splits, spec.rephrase) == ("classification", "en", ("train", "validation"), False)
    pool = load_pool(KEY)
    assert len(pool) == 10 and len(set(pool)) == 10


def test_records_match_raw_file():
    data = json.load(open(os.path.join(ROOT, "COCO_Text.json")))
    for split, set_name in (("train", "train"), ("validation", "val")):
        expected = []
        for key, a in data["anns"].items():
            im = data["imgs"][str(a["image_id"])]
            x, y, w, h = a["bbox"]
            if im["set"] == set_name and x + w <= im["width"] and y + h <= im["height"]:
                expected.append((key, a, im))
        good, _ = run(split)
        assert len(good) == len(expected) > 0
        for inst, (key, a, im) in zip(good, expected):
            assert inst.split == split and inst.source_id == str(a["id"]) and inst.source.endswith(f"#anns[{key}]")
            assert inst.boxes == [a["bbox"]]
            assert inst.image_paths == [os.path.join(ROOT, "train2014", im["file_name"])]
            assert inst.meta["original_answer"] == a["class"] and inst.meta["image_id"] == a["image_id"]
            assert inst.meta["legibility"] == a["legibility"]
            options = inst.meta["options"]
            assert sorted(options) == ["handwritten", "machine printed", "others"]
            letter = "ABC"[options.index(a["class"])]
            assert inst.outputs == f"({letter}) {a['class']}"
            assert inst.inputs == "Options: " + " ".join(f"({'ABC'[i]}) {o}" for i, o in enumerate(options))


def test_box_outside_image_is_rejected():
    _, bad = run("train")
    assert len(bad) == 1
    assert bad[0].source.endswith("COCO_Text.json#anns[45348]") and "outside the 24x24 image" in bad[0].reason
    assert not run("validation")[1]


def test_options_are_stable():
    assert [i.inputs for i in run("train")[0]] == [i.inputs for i in run("train")[0]]
