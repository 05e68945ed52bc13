"""MSRVTT-QA through the real adapter, on a hand-written fixture in the release's layout (not the
mini-world's): ``{train,val,test}_qa.json``, each a JSON list of ``{"answer", "category_id", "id",
"question", "video_id"}`` with integer ``video_id`` naming MSR-VTT's ``video<N>``, and the clips
where the MSR-VTT release puts them: ``TrainValVideo/`` (train and val) and ``TestVideo/`` (test).

Layout checked with the search tool (code corpus): a public MSRVTT-QA evaluation loader reading
``test_qa.json`` and casting ``category_id``, ``video_id`` and ``id``, with clip files named
``video<video_id>``; the MSR-VTT release's ``TrainValVideo``/``TestVideo`` folders as this repo's
msrvtt adapter (and its fixture) read them; LAVIS's MSRVTT-QA dataset card for the splits' origin.
"""

import json
import os

from ying.data.instructions import load_pool
from ying.data.schema import Reject, SourceInstance
from ying.data.tasks import get_task

ROOT = os.path.join(os.path.dirname(__file__), "fixtures", "msrvtt-qa")
TASK = "msrvtt-qa"
FILES = {"train": ("train_qa.json", "TrainValVideo"), "validation": ("val_qa.json", "TrainValVideo"),
         "test": ("test_qa.json", "TestVideo")}


def run(split):
    items = list(get_task(TASK).read_instances(ROOT, split))
    assert all(isinstance(i, (SourceInstance, Reject)) for i in items)
    return [i for i in items if isinstance(i, SourceInstance)], [i for i in items if isinstance(i, Reject)]


def test_spec_and_pool():
    spec = get_task(TASK).SPEC
    assert (spec.category, spec.lang, spec.splits, spec.rephrase) == ("video", "en", ("train", "validation", "test"), True)
    assert len(set(load_pool(TASK))) == 10


def test_one_instance_per_question_on_the_msrvtt_clip():
    for split, (name, folder) in FILES.items():
        path = os.path.join(ROOT, name)
        items = json.load(open(path))
        good, _ = run(split)
        wanted = [(i, q) for i, q in enumerate(items) if os.path.exists(os.path.join(ROOT, folder, f"video{q['video_id']}.mp4"))]
        assert len(good) == len(wanted) > 0
        for inst, (i, q) in zip(good, wanted):
            assert inst.split == split and inst.source == f"{path}#[{i}]" and inst.source_id == str(q["id"])
            assert (inst.inputs, inst.outputs) == (q["question"], q["answer"])
            assert inst.video_path == os.path.join(ROOT, folder, f"video{q['video_id']}.mp4") and inst.image_paths == []
            assert inst.meta == {"video_id": q["video_id"], "qa_id": q["id"], "category_id": q["category_id"]}


def test_a_question_on_a_clip_that_is_not_there_is_rejected():
    _, bad = run("train")
    assert len(bad) == 1 and bad[0].source.endswith("train_qa.json#[2]")
    assert bad[0].reason == "missing video file TrainValVideo/video1.mp4 or videos/video1.mp4"


def test_the_fixture_builds_into_records_with_eight_frames(tmp_path):
    from ying.config import load_config
    from ying.data.build import build_unified_local
    from ying.data.records import read_records

    cfg = load_config("tiny", overrides=["data.tasks=[msrvtt-qa]", "data.held_out=[]"])
    stats = build_unified_local(cfg, {TASK: ROOT}, str(tmp_path))
    assert {s: (c["written"], c["rejected"]) for s, c in stats[TASK].items()} == {
        "train": (2, 1), "validation": (1, 0), "test": (1, 0)}
    rec = read_records(str(tmp_path), "test")[0]
    meta = json.loads(rec["meta"])
    assert len(rec["images"]) == 8 and meta["source"] == "test_qa.json#[0]" and meta["category_id"] == 12
