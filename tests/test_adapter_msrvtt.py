import json
import os

import av

from ying.data.instructions import load_pool
from ying.data.schema import Reject, SourceInstance
from ying.data.tasks import get_task

ROOT = os.path.join(os.path.dirname(__file__), "fixtures", "msrvtt")
TASK = "msrvtt"
SOURCE = {"train": ("train_val_videodatainfo.json", "train", "TrainValVideo"),
          "validation": ("train_val_videodatainfo.json", "validate", "TrainValVideo"),
          "test": ("test_videodatainfo.json", "test", "TestVideo")}


def read(split):
    items = list(get_task(TASK).read_instances(ROOT, split))
    assert all(isinstance(i, (SourceInstance, Reject)) for i in items)
    return [i for i in items if isinstance(i, SourceInstance)], [i for i in items if isinstance(i, Reject)]


def test_spec_and_pool():
    spec = get_task(TASK).SPEC
    assert (spec.category, spec.lang, spec.splits, spec.rephrase) == ("video", "en", ("train", "validation", "test"), False)
    pool = load_pool(TASK)
    assert len(pool) == 10 and len(set(pool)) == 10


def test_one_record_per_caption():
    for split, (name, source_split, folder) in SOURCE.items():
        data = json.load(open(os.path.join(ROOT, name)))
        ours = {v["video_id"] for v in data["videos"] if v["split"] == source_split}
        expected = [s for s in data["sentences"] if s["video_id"] in ours and "caption" in s
                    and os.path.exists(os.path.join(ROOT, folder, s["video_id"] + ".mp4"))]
        good, _ = read(split)
        assert len(good) == len(expected) > 0
        for inst, s in zip(good, expected):
            assert inst.split == split and inst.inputs == "" and inst.outputs == s["caption"]
            assert inst.video_path == os.path.join(ROOT, folder, s["video_id"] + ".mp4") and inst.image_paths == []
            assert inst.source_id == str(s["sen_id"]) and inst.meta["video_id"] == s["video_id"]
            assert inst.meta["sen_id"] == s["sen_id"]


def test_fixture_videos_decode():
    with av.open(os.path.join(ROOT, "TestVideo", "video7010.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 10


def test_bad_records_are_rejected():
    good, bad = read("train")
    assert len(good) == 2 and len(bad) == 2
    assert bad[0].source.endswith("train_val_videodatainfo.json#sentences[2]")
    assert "missing video file TrainValVideo/video1.mp4" in bad[0].reason
    assert bad[1].source.endswith("#sentences[4]") and "missing field 'caption'" in bad[1].reason
