import json
import os

from ying.data.instructions import load_pool
from ying.data.schema import Reject, SourceInstance
from ying.data.tasks import get_task

ROOT = os.path.join(os.path.dirname(__file__), "fixtures", "docvqa")
TASK = "docvqa"


def run(split, root=ROOT):
    items = list(get_task(TASK).read_instances(root, split))
    assert all(isinstance(i, (SourceInstance, Reject)) for i in items)
    return [i for i in items if isinstance(i, SourceInstance)], [i for i in items if isinstance(i, Reject)]


def test_spec_and_pool():
    spec = get_task(TASK).SPEC
    assert (spec.category, spec.lang, spec.splits, spec.rephrase) == ("vqa", "en", ("train", "validation"), True)
    assert len(set(load_pool(TASK))) == 10


def test_train_matches_raw_file():
    data = json.load(open(os.path.join(ROOT, "train", "train_v1.0.json"), encoding="utf-8"))["data"]
    good, bad = run("train")
    expected = [r for r in data if os.path.exists(os.path.join(ROOT, "train", r["image"]))]
    assert len(good) == len(expected) == 3
    for inst, r in zip(good, expected):
        assert inst.split == "train" and inst.source_id == str(r["questionId"])
        assert inst.inputs == r["question"] and inst.outputs == r["answers"][0]
        assert inst.image_paths == [os.path.join(ROOT, "train", r["image"])]
        assert inst.meta["original_answer"] == r["answers"][0] and inst.meta["answers"] == r["answers"]
        assert inst.meta["question_id"] == r["questionId"] and inst.meta["doc_id"] == r["docId"]
        assert inst.meta["ucsf_document_id"] == r["ucsf_document_id"]
    assert len(bad) == 1 and "missing image file train/documents/missing_9.png" in bad[0].reason
    assert bad[0].source.endswith("train_v1.0.json#data[3]")


def test_missing_answers_is_rejected():
    data = json.load(open(os.path.join(ROOT, "val", "val_v1.0.json"), encoding="utf-8"))["data"]
    good, bad = run("validation")
    assert len(good) == 1 and good[0].inputs == data[0]["question"] and good[0].outputs == data[0]["answers"][0]
    assert good[0].split == "validation"
    assert len(bad) == 1 and "missing field 'answers'" in bad[0].reason and bad[0].source.endswith("val_v1.0.json#data[1]")


def test_missing_file_is_one_reject(tmp_path):
    good, bad = run("train", str(tmp_path))
    assert not good and len(bad) == 1 and "missing file" in bad[0].reason
