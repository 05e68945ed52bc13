"""VQA v2 through the real adapter, on a hand-written fixture in the release's layout (not the
mini-world's): ``v2_OpenEnded_mscoco_{train,val}2014_questions.json`` = ``{info, task_type,
data_type, license, data_subtype, questions: [{image_id, question, question_id}]}`` and
``v2_mscoco_{train,val}2014_annotations.json`` = ``{info, license, data_subtype, annotations:
[{question_type, multiple_choice_answer, answers: [{answer, answer_confidence, answer_id}] x10,
image_id, answer_type, question_id}], data_type}``, pictures ``{train,val}2014/COCO_<sub>_%012d.jpg``;
question ids are the image id times 1000 plus the question's number.

File names and fields checked with the search tool (code corpus): the four file names as unzipped
from v2_Questions_Train_mscoco.zip etc. (othershore0/AI-2025-Course, .../data/vqa/README.md;
BerserkerMother/VQA, src/data/path.py); a loader's annotation dataclass (image_id, question_id,
multiple_choice_answer, answers of {answer, answer_confidence, answer_id}, answer_type,
question_type); COCO file names ``%s/COCO_%s_%012d.jpg`` in several VQA preprocessing scripts.
"""

import json
import os

from ying.data.instructions import load_pool
from ying.data.schema import Reject, SourceInstance
from ying.data.tasks import get_task

ROOT = os.path.join(os.path.dirname(__file__), "fixtures", "vqa-v2")
TASK = "vqa-v2"
SUB = {"train": "train2014", "validation": "val2014"}


def run(split):
    items = list(get_task(TASK).read_instances(ROOT, split))
    assert all(isinstance(i, (SourceInstance, Reject)) for i in items)
    return [i for i in items if isinstance(i, SourceInstance)], [i for i in items if isinstance(i, Reject)]


def test_spec_and_pool():
    spec = get_task(TASK).SPEC
    assert (spec.category, spec.lang, spec.splits, spec.rephrase) == ("vqa", "en", ("train", "validation"), True)
    assert len(set(load_pool(TASK))) == 10


def test_one_instance_per_question_answered_by_multiple_choice_answer():
    for split, sub in SUB.items():
        q_path = os.path.join(ROOT, f"v2_OpenEnded_mscoco_{sub}_questions.json")
        qs = json.load(open(q_path))["questions"]
        anns = {a["question_id"]: a for a in json.load(open(os.path.join(ROOT, f"v2_mscoco_{sub}_annotations.json")))["annotations"]}
        good, _ = run(split)
        wanted = [(i, q) for i, q in enumerate(qs) if os.path.exists(os.path.join(ROOT, sub, f"COCO_{sub}_{q['image_id']:012d}.jpg"))]
        assert len(good) == len(wanted) > 0
        for inst, (i, q) in zip(good, wanted):
            ann = anns[q["question_id"]]
            assert inst.split == split and inst.source_id == str(q["question_id"])
            assert inst.source == f"{q_path}#questions[{i}]"
            assert (inst.inputs, inst.outputs) == (q["question"], ann["multiple_choice_answer"])
            assert inst.image_paths == [os.path.join(ROOT, sub, f"COCO_{sub}_{q['image_id']:012d}.jpg")]
            assert inst.meta["answers"] == [a["answer"] for a in ann["answers"]] and len(inst.meta["answers"]) == 10
            assert (inst.meta["question_type"], inst.meta["answer_type"]) == (ann["question_type"], ann["answer_type"])
            assert inst.meta["image_id"] == q["image_id"] and inst.meta["original_answer"] == ann["multiple_choice_answer"]
    train, _ = run("train")
    assert [i.outputs for i in train] == ["net", "pitcher", "orange", "skiing", "no"]
    assert train[4].meta["answer_type"] == "yes/no"


def test_a_question_whose_picture_is_missing_is_rejected():
    _, bad = run("train")
    assert len(bad) == 1 and bad[0].reason == "missing image file train2014/COCO_train2014_000000524291.jpg"
    assert bad[0].source.endswith("v2_OpenEnded_mscoco_train2014_questions.json#questions[5]")
    assert run("validation")[1] == []
