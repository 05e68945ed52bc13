import json
import os

from ying.data.instructions import load_pool
from ying.data.schema import Reject, SourceInstance
from ying.data.tasks import get_task

ROOT = os.path.join(os.path.dirname(__file__), "fixtures", "msvd-qa")
TASK = "msvd-qa"
FILES = {"train": "train_qa.json", "validation": "val_qa.json", "test": "test_qa.json"}


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
    mapping = {}
    for line in open(os.path.join(ROOT, "youtube_mapping.txt")):
        name, vid = line.split()
        mapping[int(vid[3:])] = name
    for split, name in FILES.items():
        raw = json.load(open(os.path.join(ROOT, name)))
        expected = [r for r in raw if "answer" in r
                    and os.path.exists(os.path.join(ROOT, "YouTubeClips", mapping[r["video_id"]] + ".avi"))]
        good, _ = read(split)
        assert len(good) == len(expected) > 0
        for inst, r in zip(good, expected):
            assert inst.split == split and (inst.inputs, inst.outputs) == (r["question"], r["answer"])
            assert inst.video_path == os.path.join(ROOT, "YouTubeClips", mapping[r["video_id"]] + ".avi")
            assert inst.image_paths == [] and inst.source_id == str(r["id"])
            assert inst.meta["original_answer"] == r["answer"] and inst.meta["video_id"] == r["video_id"]
            assert inst.meta["youtube_clip"] == mapping[r["video_id"]]


def test_bad_records_are_rejected():
    good, bad = read("train")
    assert len(good) == 3 and len(bad) == 2
    assert bad[0].source.endswith("train_qa.json#[3]") and "missing video file YouTubeClips/-8y1Q0rA3n8_108_115.avi" in bad[0].reason
    assert bad[1].source.endswith("train_qa.json#[4]") and "missing field 'answer'" in bad[1].reason


def test_unmapped_video_id_is_rejected(tmp_path):
    import shutil

    root = tmp_path / "msvd"
    shutil.copytree(ROOT, root)
    (root / "val_qa.json").write_text(json.dumps([{"answer": "x", "id": 9, "question": "what?", "video_id": 77}]))
    items = list(get_task(TASK).read_instances(str(root), "validation"))
    assert len(items) == 1 and isinstance(items[0], Reject) and "vid77" in items[0].reason
