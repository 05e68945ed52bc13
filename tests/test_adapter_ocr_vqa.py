import json
import os

from ying.data.instructions import load_pool
from ying.data.schema import Reject, SourceInstance
from ying.data.tasks import get_task

ROOT = os.path.join(os.path.dirname(__file__), "fixtures", "ocr-vqa")
TASK = "ocr-vqa"
CODE = {"train": 1, "validation": 2, "test": 3}


def run(split, root=ROOT):
    items = list(get_task(TASK).read_instances(root, split))
    assert all(isinstance(i, (SourceInstance, Reject)) for i in items)
    return [i for i in items if isinstance(i, SourceInstance)], [i for i in items if isinstance(i, Reject)]


def test_spec_and_pool():
    spec = get_task(TASK).SPEC
    assert (spec.category, spec.lang, spec.splits, spec.rephrase) == ("vqa", "en", ("train", "validation", "test"), True)
    assert len(set(load_pool(TASK))) == 10


def test_every_split_matches_dataset_json():
    data = json.load(open(os.path.join(ROOT, "dataset.json"), encoding="utf-8"))
    for split, code in CODE.items():
        good, bad = run(split)
        expected = []
        for key, rec in data.items():
            if rec["split"] != code:
                continue
            ext = os.path.splitext(rec["imageURL"])[1]
            path = os.path.join(ROOT, "images", key + ext)
            if os.path.exists(path):
                expected += [(key, j, q, a, path, rec) for j, (q, a) in enumerate(zip(rec["questions"], rec["answers"]))]
        assert len(good) == len(expected) > 0
        for inst, (key, j, q, a, path, rec) in zip(good, expected):
            assert inst.split == split and inst.source_id == f"{key}-{j}"
            assert (inst.inputs, inst.outputs) == (q, a) and inst.image_paths == [path]
            assert inst.meta["original_answer"] == a and inst.meta["image_id"] == key
            assert inst.meta["genre"] == rec["genre"] and inst.meta["title"] == rec["title"]
        if split != "train":
            assert not bad
    assert run("test")[0][0].image_paths[0].endswith("B00O80WC6I.png")  # extension follows imageURL


def test_missing_cover_is_rejected():
    _, bad = run("train")
    assert len(bad) == 1 and bad[0].reason == "missing image file images/0451524934.jpg"
    assert bad[0].source.endswith("dataset.json#0451524934") and bad[0].split == "train"


def test_mismatched_lists_are_rejected(tmp_path):
    data = json.load(open(os.path.join(ROOT, "dataset.json"), encoding="utf-8"))
    data["1623439671"]["answers"].pop()
    os.symlink(os.path.join(ROOT, "images"), tmp_path / "images")
    json.dump(data, open(tmp_path / "dataset.json", "w"))
    good, bad = run("validation", str(tmp_path))
    assert not good and len(bad) == 1 and "same length" in bad[0].reason and "#1623439671" in bad[0].source
