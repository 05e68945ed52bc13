import json
import os

from ying.data.instructions import load_pool
from ying.data.schema import Reject, SourceInstance
from ying.data.tasks import get_task

ROOT = os.path.join(os.path.dirname(__file__), "fixtures", "viquae")
TASK = "viquae"


def run(split, root=ROOT):
    items = list(get_task(TASK).read_instances(root, split))
    assert all(isinstance(i, (SourceInstance, Reject)) for i in items)
    return [i for i in items if isinstance(i, SourceInstance)], [i for i in items if isinstance(i, Reject)]


def parsed(split):
    out = []
    for n, line in enumerate(open(os.path.join(ROOT, f"{split}.jsonl"), encoding="utf-8").read().splitlines(), start=1):
        try:
            out.append((n, json.loads(line)))
        except json.JSONDecodeError:
            pass
    return out


def test_spec_and_pool():
    spec = get_task(TASK).SPEC
    assert (spec.category, spec.lang, spec.splits, spec.rephrase) == ("kvqa", "en", ("train", "validation", "test"), True)
    assert len(set(load_pool(TASK))) == 10


def test_splits_match_jsonl():
    for split in ("train", "validation", "test"):
        good, _ = run(split)
        expected = [(n, r) for n, r in parsed(split) if os.path.exists(os.path.join(ROOT, "images", r["image"]))]
        assert len(good) == len(expected) > 0
        for inst, (n, r) in zip(good, expected):
            assert inst.split == split and inst.source_id == r["id"]
            assert inst.source == os.path.join(ROOT, f"{split}.jsonl") + f":{n}"
            assert (inst.inputs, inst.outputs) == (r["input"], r["output"]["original_answer"])
            assert inst.image_paths == [os.path.join(ROOT, "images", r["image"])]
            assert inst.meta["original_answer"] == r["output"]["original_answer"]
            assert inst.meta["answers"] == r["output"]["answer"] and inst.meta["kilt_id"] == r["kilt_id"]


def test_bad_lines_are_rejected():
    _, bad = run("train")
    assert len(bad) == 1 and "not valid JSON" in bad[0].reason and bad[0].source.endswith("train.jsonl:3")
    _, bad = run("validation")
    assert len(bad) == 1 and bad[0].reason == "missing image file images/512px-Not_There.jpg"
    assert bad[0].source.endswith("validation.jsonl:2")
