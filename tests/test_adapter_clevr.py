import json
import os

from ying.data.instructions import load_pool
from ying.data.schema import Reject, SourceInstance
from ying.data.tasks import get_task

ROOT = os.path.join(os.path.dirname(__file__), "fixtures", "clevr")
mod = get_task("clevr")


def read(split):
    items = list(mod.read_instances(ROOT, split))
    assert all(isinstance(i, (SourceInstance, Reject)) for i in items)
    return [i for i in items if isinstance(i, SourceInstance)], [i for i in items if isinstance(i, Reject)]


def test_spec_and_pool():
    assert (mod.SPEC.category, mod.SPEC.lang, mod.SPEC.splits, mod.SPEC.rephrase) == ("reasoning", "en", ("train", "validation"), True)
    pool = load_pool("clevr")
    assert len(pool) == 10 and len(set(pool)) == 10


def test_validation_matches_questions_file():
    path = os.path.join(ROOT, "questions", "CLEVR_val_questions.json")
    raw = json.load(open(path))["questions"]
    present = set(os.listdir(os.path.join(ROOT, "images", "val")))
    expected = [q for q in raw if "answer" in q and q["image_filename"] in present]
    good, bad = read("validation")
    assert len(good) == len(expected) == 3
    for inst, q in zip(good, expected):
        assert inst.split == "validation" and inst.task == "clevr"
        assert inst.inputs == q["question"] and inst.outputs == q["answer"]
        assert inst.meta["original_answer"] == q["answer"]
        assert inst.image_paths == [os.path.join(ROOT, "images", "val", q["image_filename"])]
        assert inst.source_id == str(q["question_index"]) and inst.meta["question_index"] == q["question_index"]
        assert inst.meta["image_index"] == q["image_index"] and inst.boxes is None
    assert len(bad) == 2
    missing = [r for r in bad if "missing image file" in r.reason]
    assert len(missing) == 1 and "CLEVR_val_000009.png" in missing[0].reason and missing[0].source == f"{path}#questions[3]"
    no_answer = [r for r in bad if "'answer'" in r.reason]
    assert len(no_answer) == 1 and no_answer[0].source == f"{path}#questions[4]"


def test_train_and_broken_file():
    good, bad = read("train")
    assert not bad and [i.outputs for i in good] == ["metal", "no"]
    good, bad = list(mod.read_instances(os.path.join(ROOT, "nowhere"), "train")), None
    assert len(good) == 1 and isinstance(good[0], Reject) and "CLEVR_train_questions.json" in good[0].source
