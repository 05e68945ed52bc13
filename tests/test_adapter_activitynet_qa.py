import json
import os

from ying.data.instructions import load_pool
from ying.data.schema import Reject, SourceInstance
from ying.data.tasks import get_task

ROOT = os.path.join(os.path.dirname(__file__), "fixtures", "activitynet-qa")
TASK = "activitynet-qa"
PREFIX = {"train": "train", "validation": "val", "test": "test"}


def read(split):
    items = list(get_task(TASK).read_instances(ROOT, split))
    assert all(isinstance(i, (SourceInstance, Reject)) for i in items)
    return [i for i in items if isinstance(i, SourceInstance)], [i for i in items if isinstance(i, Reject)]


def test_spec_and_pool():
    spec = get_task(TASK).SPEC
    assert (spec.category, spec.lang, spec.splits, spec.rephrase) == ("video", "en", ("train", "validation", "test"), True)
    pool = load_pool(TASK)
    assert len(pool) == 10 and len(set(pool)) == 10


def test_records_match_release_files():
    for split, p in PREFIX.items():
        qs = json.load(open(os.path.join(ROOT, f"{p}_q.json")))
        ans = {a["question_id"]: a for a in json.load(open(os.path.join(ROOT, f"{p}_a.json")))}
        expected = [q for q in qs if q["question_id"] in ans
                    and os.path.exists(os.path.join(ROOT, "videos", f"v_{q['video_name']}.mp4"))]
        good, _ = read(split)
        assert len(good) == len(expected) > 0
        for inst, q in zip(good, expected):
            a = ans[q["question_id"]]
            assert inst.split == split and (inst.inputs, inst.outputs) == (q["question"], a["answer"])
            assert inst.video_path == os.path.join(ROOT, "videos", f"v_{q['video_name']}.mp4")
            assert inst.source_id == q["question_id"] and inst.image_paths == []
            assert inst.meta == {"question_id": q["question_id"], "video_name": q["video_name"],
                                 "type": a["type"], "original_answer": a["answer"]}


def test_bad_records_are_rejected():
    good, bad = read("train")
    assert len(good) == 3 and len(bad) == 2
    assert bad[0].source.endswith("train_q.json#[3]") and "missing video file videos/v_JTQsElq5UN4.mp4" in bad[0].reason
    assert bad[1].source.endswith("train_q.json#[4]") and "no answer for question_id v_7X3wPRKuAsU_9" in bad[1].reason
