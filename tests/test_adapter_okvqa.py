import json
import os
from collections import Counter

from ying.data.instructions import load_pool
from ying.data.schema import Reject, SourceInstance
from ying.data.tasks import get_task

ROOT = os.path.join(os.path.dirname(__file__), "fixtures", "okvqa")
TASK = "okvqa"
SUB = {"train": "train2014", "validation": "val2014"}


def run(split, root=ROOT):
    items = list(get_task(TASK).read_instances(root, split))
    assert all(isinstance(i, (SourceInstance, Reject)) for i in items)
    return [i for i in items if isinstance(i, SourceInstance)], [i for i in items if isinstance(i, Reject)]


def test_spec_and_pool():
    spec = get_task(TASK).SPEC
    assert (spec.category, spec.lang, spec.splits, spec.rephrase) == ("kvqa", "en", ("train", "validation"), True)
    assert len(set(load_pool(TASK))) == 10


def test_splits_match_vqa_format_files():
    for split, sub in SUB.items():
        qs = json.load(open(os.path.join(ROOT, f"OpenEnded_mscoco_{sub}_questions.json")))["questions"]
        anns = {a["question_id"]: a for a in json.load(open(os.path.join(ROOT, f"mscoco_{sub}_annotations.json")))["annotations"]}
        good, _ = run(split)
        expected = [q for q in qs if os.path.exists(os.path.join(ROOT, sub, f"COCO_{sub}_{q['image_id']:012d}.jpg"))]
        assert len(good) == len(expected) > 0
        for inst, q in zip(good, expected):
            answers = [a["answer"] for a in anns[q["question_id"]]["answers"]]
            counts = Counter(answers)
            top = next(a for a in answers if counts[a] == max(counts.values()))
            assert inst.split == split and inst.source_id == str(q["question_id"])
            assert (inst.inputs, inst.outputs) == (q["question"], top)
            assert inst.image_paths == [os.path.join(ROOT, sub, f"COCO_{sub}_{q['image_id']:012d}.jpg")]
            assert inst.meta["original_answer"] == top and inst.meta["answers"] == answers
            assert inst.meta["image_id"] == q["image_id"] and inst.meta["question_id"] == q["question_id"]
    train, _ = run("train")
    assert [i.outputs for i in train] == ["pony tail", "retriever"]
    val, _ = run("validation")
    assert val[0].outputs == "race"  # 4-4 tie goes to the first given


def test_missing_image_is_rejected():
    _, bad = run("validation")
    assert len(bad) == 1 and bad[0].reason == "missing image file val2014/COCO_val2014_000000581929.jpg"
    assert bad[0].source.endswith("OpenEnded_mscoco_val2014_questions.json#questions[1]")
