import json
import os

from ying.data.instructions import load_pool
from ying.data.schema import Reject, SourceInstance
from ying.data.tasks import get_task

ROOT = os.path.join(os.path.dirname(__file__), "fixtures", "visual-dialog")
mod = get_task("visual-dialog")


def read(split):
    items = list(mod.read_instances(ROOT, split))
    return [i for i in items if isinstance(i, SourceInstance)], [i for i in items if isinstance(i, Reject)]


def test_spec_and_pool():
    assert (mod.SPEC.category, mod.SPEC.lang, mod.SPEC.splits) == ("generation", "en", ("train", "validation", "test"))
    pool = load_pool("visual-dialog")
    assert len(pool) == 10 and len(set(pool)) == 10


def test_validation_matches_dialog_file():
    path = os.path.join(ROOT, "visdial_1.0_val.json")
    data = json.load(open(path))["data"]
    Q, A = data["questions"], data["answers"]
    dialog = data["dialogs"][0]
    good, bad = read("validation")
    first = [g for g in good if g.meta["image_id"] == dialog["image_id"]]
    assert len(first) == len(dialog["dialog"]) == 3
    for r, (inst, turn) in enumerate(zip(first, dialog["dialog"])):
        assert inst.split == "validation" and inst.source_id == f"{dialog['image_id']}-{r + 1}"
        assert inst.outputs == A[turn["answer"]] and inst.meta["original_answer"] == A[turn["answer"]]
        lines = inst.inputs.split("\n")
        assert lines[0] == f"Caption: {dialog['caption']}" and lines[-1] == f"Question: {Q[turn['question']]}"
        for prev in dialog["dialog"][:r]:
            assert f"Q: {Q[prev['question']]}\nA: {A[prev['answer']]}" in inst.inputs
        assert inst.image_paths == [os.path.join(ROOT, "VisualDialog_val2018", "VisualDialog_val2018_%012d.jpg" % dialog["image_id"])]
        assert inst.meta["gt_index"] == turn["gt_index"] and inst.meta["round"] == r + 1
    assert "Dialog so far" not in first[0].inputs
    # dialog 3: round 1 is fine, round 2 lacks its answer
    assert [g.source_id for g in good] == ["185565-1", "185565-2", "185565-3", "185567-1"]
    assert [r.source for r in bad] == [f"{path}#dialogs[1]", f"{path}#dialogs[2].dialog[1]"]
    assert "missing image file VisualDialog_val2018/VisualDialog_val2018_000000185566.jpg" in bad[0].reason
    assert "'answer'" in bad[1].reason


def test_test_split_skips_hidden_round_and_train_uses_coco():
    good, bad = read("test")
    assert not bad and [g.source_id for g in good] == ["568676-1", "568676-2"]
    good, bad = read("train")
    assert not bad
    assert good[0].image_paths == [os.path.join(ROOT, "train2014", "COCO_train2014_000000378466.jpg")]
    assert good[1].image_paths == [os.path.join(ROOT, "val2014", "COCO_val2014_000000000009.jpg")]
