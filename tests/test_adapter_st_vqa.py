import json
import os

import pytest

from ying.data.instructions import load_pool
from ying.data.schema import Reject, SourceInstance
from ying.data.tasks import get_task

ROOT = os.path.join(os.path.dirname(__file__), "fixtures", "st-vqa")
TASK = "st-vqa"


def run(split, root=ROOT):
    items = list(get_task(TASK).read_instances(root, split))
    assert all(isinstance(i, (SourceInstance, Reject)) for i in items)
    return [i for i in items if isinstance(i, SourceInstance)], [i for i in items if isinstance(i, Reject)]


def test_spec_and_pool():
    spec = get_task(TASK).SPEC
    assert (spec.category, spec.lang, spec.splits, spec.rephrase) == ("vqa", "en", ("train",), True)
    assert len(set(load_pool(TASK))) == 10
    with pytest.raises(ValueError):
        list(get_task(TASK).read_instances(ROOT, "test"))


def test_train_matches_raw_file():
    data = json.load(open(os.path.join(ROOT, "train_task_3.json"), encoding="utf-8"))["data"]
    good, bad = run("train")
    expected = [r for r in data if r["answers"] and os.path.exists(os.path.join(ROOT, "train_imgs", r["file_path"]))]
    assert len(good) == len(expected) == 3
    for inst, r in zip(good, expected):
        assert inst.split == "train" and inst.source_id == str(r["question_id"])
        assert (inst.inputs, inst.outputs) == (r["question"], r["answers"][0])
        assert inst.image_paths == [os.path.join(ROOT, "train_imgs", r["file_path"])]
        assert inst.meta["original_answer"] == r["answers"][0] and inst.meta["answers"] == r["answers"]
        assert inst.meta["question_id"] == r["question_id"] and inst.meta["source_dataset"] == r["dataset"]
    reasons = {b.source.rsplit("#", 1)[1]: b.reason for b in bad}
    assert reasons == {
        "data[3]": "missing image file train_imgs/coco-text/COCO_train2014_000000099999.jpg",
        "data[4]": "answers is not a non-empty list of text",
    }
    assert all(b.source.startswith(os.path.join(ROOT, "train_task_3.json")) for b in bad)
