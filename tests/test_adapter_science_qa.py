import json
import os

from ying.data.instructions import load_pool
from ying.data.schema import Reject, SourceInstance
from ying.data.tasks import get_task

ROOT = os.path.join(os.path.dirname(__file__), "fixtures", "science-qa")
TASK = "science-qa"
SUB = {"train": "train", "validation": "val", "test": "test"}


def run(split, root=ROOT):
    items = list(get_task(TASK).read_instances(root, split))
    assert all(isinstance(i, (SourceInstance, Reject)) for i in items)
    return [i for i in items if isinstance(i, SourceInstance)], [i for i in items if isinstance(i, Reject)]


def test_spec_and_pool():
    spec = get_task(TASK).SPEC
    assert (spec.category, spec.lang, spec.splits) == ("kvqa", "en", ("train", "validation", "test"))
    assert len(set(load_pool(TASK))) == 10


def test_splits_match_problems_and_pid_splits():
    problems = json.load(open(os.path.join(ROOT, "problems.json"), encoding="utf-8"))
    pid_splits = json.load(open(os.path.join(ROOT, "pid_splits.json")))
    for split, sub in SUB.items():
        good, _ = run(split)
        expected = [p for p in pid_splits[sub] if problems[p]["image"]
                    and problems[p]["answer"] < len(problems[p]["choices"])
                    and os.path.exists(os.path.join(ROOT, "images", sub, p, "image.png"))]
        assert [i.source_id for i in good] == expected and expected
        for inst in good:
            p = problems[inst.source_id]
            letters = "ABCDE"
            opts = " ".join(f"({letters[k]}) {c}" for k, c in enumerate(p["choices"]))
            head = f"Context: {p['hint']}\n" if p["hint"] else ""
            assert inst.inputs == f"{head}Question: {p['question']}\nOptions: {opts}"
            assert inst.outputs == f"({letters[p['answer']]}) {p['choices'][p['answer']]}"
            assert inst.image_paths == [os.path.join(ROOT, "images", sub, inst.source_id, "image.png")]
            assert inst.meta["original_answer"] == p["choices"][p["answer"]] and inst.meta["answer_index"] == p["answer"]
            assert inst.meta["lecture"] == p["lecture"] and inst.meta["solution"] == p["solution"]
            assert inst.split == split
    train, _ = run("train")
    assert train[1].inputs.startswith("Context: The passage below") and train[1].outputs.startswith("(B) ")
    assert "3" not in [i.source_id for i in train]  # no image: not part of the task


def test_bad_records_are_rejected():
    _, bad = run("train")
    assert len(bad) == 1 and bad[0].reason == "missing image file images/train/4/image.png"
    assert bad[0].source.endswith("problems.json#4")
    _, bad = run("test")
    assert len(bad) == 1 and "answer index 7" in bad[0].reason and bad[0].source.endswith("problems.json#6")
