import json
import os

from ying.data.instructions import load_pool
from ying.data.schema import Reject, SourceInstance
from ying.data.tasks import get_task

ROOT = os.path.join(os.path.dirname(__file__), "fixtures", "fm-iqa")
TASK = "fm-iqa"


def read(split):
    items = list(get_task(TASK).read_instances(ROOT, split))
    assert all(isinstance(i, (SourceInstance, Reject)) for i in items)
    return [i for i in items if isinstance(i, SourceInstance)], [i for i in items if isinstance(i, Reject)]


def test_spec_and_pool():
    spec = get_task(TASK).SPEC
    assert (spec.category, spec.lang, spec.splits, spec.rephrase) == ("chinese", "zh", ("train", "validation"), False)
    pool = load_pool(TASK)
    assert len(pool) == 10 and len(set(pool)) == 10


def test_records_match_release_file():
    raw = json.load(open(os.path.join(ROOT, "FM-IQA.json"), encoding="utf-8"))
    for split, section, sub in (("train", "train", "train2014"), ("validation", "val", "val2014")):
        good, _ = read(split)
        expected = [r for r in raw[section] if "Answer" in r and "Question" in r
                    and os.path.exists(os.path.join(ROOT, sub, f"COCO_{sub}_{int(r['image_id']):012d}.jpg"))]
        assert len(good) == len(expected) > 0
        for inst, r in zip(good, expected):
            assert inst.task == TASK and inst.split == split
            assert inst.inputs == r["Question"] and inst.outputs == r["Answer"]
            assert inst.image_paths == [os.path.join(ROOT, sub, f"COCO_{sub}_{int(r['image_id']):012d}.jpg")]
            assert inst.video_path is None and inst.boxes is None
            assert inst.source_id == r["question_id"] and inst.meta["question_id"] == r["question_id"]
            assert inst.meta["image_id"] == r["image_id"] and inst.meta["original_answer"] == r["Answer"]


def test_bad_records_are_rejected():
    good, bad = read("train")
    assert len(good) == 3 and len(bad) == 2
    assert bad[0].source.endswith("FM-IQA.json#train[3]") and "missing image file" in bad[0].reason
    assert "COCO_train2014_000000999999.jpg" in bad[0].reason
    assert bad[1].source.endswith("FM-IQA.json#train[4]") and "missing field 'Answer'" in bad[1].reason
    assert all(r.split == "train" and r.task == TASK for r in bad)


def test_missing_annotation_file_is_one_reject(tmp_path):
    items = list(get_task(TASK).read_instances(str(tmp_path), "train"))
    assert len(items) == 1 and isinstance(items[0], Reject) and "missing file" in items[0].reason
