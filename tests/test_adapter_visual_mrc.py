import json
import os

from ying.data.instructions import load_pool
from ying.data.schema import Reject, SourceInstance
from ying.data.tasks import get_task

ROOT = os.path.join(os.path.dirname(__file__), "fixtures", "visual-mrc")
mod = get_task("visual-mrc")


def read(split):
    items = list(mod.read_instances(ROOT, split))
    return [i for i in items if isinstance(i, SourceInstance)], [i for i in items if isinstance(i, Reject)]


def test_spec_and_pool():
    assert (mod.SPEC.category, mod.SPEC.lang, mod.SPEC.splits) == ("reasoning", "en", ("train", "validation", "test"))
    pool = load_pool("visual-mrc")
    assert len(pool) == 10 and len(set(pool)) == 10


def test_validation_matches_split_file():
    path = os.path.join(ROOT, "val.json")
    docs = json.load(open(path))
    expected = [(d, k, qa) for d in docs[:2] for k, qa in enumerate(d["qa_data"]) if "text" in qa["answer"]]
    good, bad = read("validation")
    assert len(good) == len(expected) == 3
    for inst, (doc, k, qa) in zip(good, expected):
        assert inst.split == "validation" and inst.source_id == f"{doc['id']}-{k}"
        assert inst.inputs == qa["question"]["text"] and inst.outputs == qa["answer"]["text"]
        assert inst.meta["original_answer"] == qa["answer"]["text"] and inst.meta["document_id"] == doc["id"]
        assert inst.image_paths == [os.path.join(ROOT, doc["image_filename"])]
        assert inst.meta["relevant_boxes"] == qa["answer"]["relevant"]
    assert len(bad) == 2
    assert bad[0].source == f"{path}#[1].qa_data[1]" and "'text'" in bad[0].reason
    assert bad[1].source == f"{path}#[2]" and "missing image file image/1002.png" in bad[1].reason


def test_train_and_test():
    for split in ("train", "test"):
        good, bad = read(split)
        assert len(good) == 1 and not bad
