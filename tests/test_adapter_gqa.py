import json
import os

from ying.data.instructions import load_pool
from ying.data.schema import Reject, SourceInstance
from ying.data.tasks import get_task

ROOT = os.path.join(os.path.dirname(__file__), "fixtures", "gqa")
TASK = "gqa"
FILES = {"train": "train_balanced", "validation": "val_balanced", "test": "testdev_balanced"}


def run(split, root=ROOT):
    items = list(get_task(TASK).read_instances(root, split))
    assert all(isinstance(i, (SourceInstance, Reject)) for i in items)
    return [i for i in items if isinstance(i, SourceInstance)], [i for i in items if isinstance(i, Reject)]


def test_spec_and_pool():
    spec = get_task(TASK).SPEC
    assert (spec.category, spec.lang, spec.splits, spec.rephrase) == ("vqa", "en", ("train", "validation", "test"), True)
    assert len(set(load_pool(TASK))) == 10


def test_splits_match_question_files():
    for split, sub in FILES.items():
        path = os.path.join(ROOT, "questions1.2", f"{sub}_questions.json")
        data = json.load(open(path, encoding="utf-8"))
        good, bad = run(split)
        expected = [(k, r) for k, r in data.items() if "answer" in r and os.path.exists(os.path.join(ROOT, "images", r["imageId"] + ".jpg"))]
        assert len(good) == len(expected) > 0
        for inst, (qid, r) in zip(good, expected):
            assert inst.split == split and inst.source_id == qid and inst.source == f"{path}#{qid}"
            assert (inst.inputs, inst.outputs) == (r["question"], r["answer"])
            assert inst.image_paths == [os.path.join(ROOT, "images", r["imageId"] + ".jpg")]
            assert inst.meta["original_answer"] == r["answer"] and inst.meta["full_answer"] == r["fullAnswer"]
            assert inst.meta["image_id"] == r["imageId"] and inst.meta["question_id"] == qid
        if split == "train":
            assert not bad


def test_bad_records_are_rejected():
    _, bad = run("validation")
    assert len(bad) == 1 and bad[0].reason == "missing field 'answer'" and bad[0].source.endswith("val_balanced_questions.json#05451385")
    _, bad = run("test")
    assert len(bad) == 1 and bad[0].reason == "missing image file images/n999999.jpg" and bad[0].split == "test"
    assert bad[0].source.endswith("testdev_balanced_questions.json#20968380")
