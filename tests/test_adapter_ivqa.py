import csv
import os
from collections import Counter

from ying.data.instructions import load_pool
from ying.data.schema import Reject, SourceInstance
from ying.data.tasks import get_task

ROOT = os.path.join(os.path.dirname(__file__), "fixtures", "ivqa")
TASK = "ivqa"
FILES = {"train": "train.csv", "validation": "val.csv", "test": "test.csv"}


def read(split):
    items = list(get_task(TASK).read_instances(ROOT, split))
    assert all(isinstance(i, (SourceInstance, Reject)) for i in items)
    return [i for i in items if isinstance(i, SourceInstance)], [i for i in items if isinstance(i, Reject)]


def test_spec_and_pool():
    spec = get_task(TASK).SPEC
    assert (spec.category, spec.lang, spec.splits, spec.rephrase) == ("video", "en", ("train", "validation", "test"), True)
    pool = load_pool(TASK)
    assert len(pool) == 10 and len(set(pool)) == 10


def test_records_match_csv():
    for split, name in FILES.items():
        rows = list(csv.DictReader(open(os.path.join(ROOT, name), newline="")))
        good, _ = read(split)
        by_row = {i.meta["row"]: i for i in good}
        assert by_row
        for n, row in enumerate(rows):
            video = os.path.join(ROOT, "video", f"{row['video_id']}_{row['start']}_{row['end']}.mp4")
            if not row["question"] or not os.path.exists(video):
                assert n not in by_row
                continue
            inst = by_row[n]
            answers = [row[f"answer{k}"] for k in range(1, 6)]
            counts = Counter(answers)
            assert counts[inst.outputs] == max(counts.values())
            assert inst.split == split and inst.inputs == row["question"] and inst.video_path == video
            assert inst.meta["answers"] == answers and inst.meta["original_answer"] == inst.outputs
            assert inst.meta["video_id"] == row["video_id"] and (inst.meta["start"], inst.meta["end"]) == (row["start"], row["end"])
    good, _ = read("train")
    assert [i.outputs for i in good] == ["onion", "knife", "fence"]  # 'fence' ties 'wall' 2-2 and comes first


def test_bad_records_are_rejected():
    good, bad = read("train")
    assert len(good) == 3 and len(bad) == 2
    assert bad[0].source.endswith("train.csv#row4") and "missing video file video/aaaaaaaaaaa_0_15.mp4" in bad[0].reason
    assert bad[1].source.endswith("train.csv#row5") and "missing field 'question'" in bad[1].reason


def test_missing_columns_is_one_reject(tmp_path):
    (tmp_path / "val.csv").write_text("video_id,question\nabc,what\n")
    items = list(get_task(TASK).read_instances(str(tmp_path), "validation"))
    assert len(items) == 1 and isinstance(items[0], Reject) and "missing columns" in items[0].reason
