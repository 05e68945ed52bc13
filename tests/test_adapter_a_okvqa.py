import json
import os

from ying.data.instructions import load_pool
from ying.data.schema import Reject, SourceInstance
from ying.data.tasks import get_task

ROOT = os.path.join(os.path.dirname(__file__), "fixtures", "a-okvqa")
TASK = "a-okvqa"
SUB = {"train": "train", "validation": "val"}


def run(split, root=ROOT):
    items = list(get_task(TASK).read_instances(root, split))
    assert all(isinstance(i, (SourceInstance, Reject)) for i in items)
    return [i for i in items if isinstance(i, SourceInstance)], [i for i in items if isinstance(i, Reject)]


def test_spec_and_pool():
    spec = get_task(TASK).SPEC
    assert (spec.category, spec.lang, spec.splits, spec.rephrase) == ("kvqa", "en", ("train", "validation"), True)
    assert len(set(load_pool(TASK))) == 10


def test_splits_match_raw_files():
    for split, sub in SUB.items():
        data = json.load(open(os.path.join(ROOT, f"aokvqa_v1p0_{sub}.json"), encoding="utf-8"))
        good, _ = run(split)
        expected = [r for r in data if 0 <= r["correct_choice_idx"] < len(r["choices"])]
        assert len(good) == len(expected) > 0
        for inst, r in zip(good, expected):
            gold = r["choices"][r["correct_choice_idx"]]
            assert inst.split == split and inst.source_id == r["question_id"]
            assert (inst.inputs, inst.outputs) == (r["question"], gold)
            assert inst.image_paths == [os.path.join(ROOT, f"{sub}2017", f"{r['image_id']:012d}.jpg")]
            assert inst.meta["original_answer"] == gold and inst.meta["rationales"] == r["rationales"]
            assert inst.meta["choices"] == r["choices"] and inst.meta["direct_answers"] == r["direct_answers"]
            assert inst.meta["image_id"] == r["image_id"] and inst.meta["question_id"] == r["question_id"]
    assert run("train")[0][0].outputs == "cab"


def test_bad_choice_index_is_rejected():
    _, bad = run("train")
    assert len(bad) == 1 and "correct_choice_idx 5" in bad[0].reason
    assert bad[0].source == os.path.join(ROOT, "aokvqa_v1p0_train.json") + "#[2]"


def test_missing_image_is_rejected(tmp_path):
    data = json.load(open(os.path.join(ROOT, "aokvqa_v1p0_val.json"), encoding="utf-8"))
    data[0]["image_id"] = 1
    json.dump(data, open(tmp_path / "aokvqa_v1p0_val.json", "w"))
    os.symlink(os.path.join(ROOT, "val2017"), tmp_path / "val2017")
    good, bad = run("validation", str(tmp_path))
    assert not good and bad[0].reason == "missing image file val2017/000000000001.jpg"
