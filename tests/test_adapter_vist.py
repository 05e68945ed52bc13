import json
import os

from ying.data.instructions import load_pool
from ying.data.schema import Reject, SourceInstance
from ying.data.tasks import get_task

ROOT = os.path.join(os.path.dirname(__file__), "fixtures", "vist")
mod = get_task("vist")


def test_spec_and_pool():
    assert (mod.SPEC.category, mod.SPEC.lang, mod.SPEC.splits) == ("generation", "en", ("train", "validation", "test"))
    pool = load_pool("vist")
    assert len(pool) == 10 and len(set(pool)) == 10


def test_validation_matches_story_file():
    path = os.path.join(ROOT, "sis", "val.story-in-sequence.json")
    anns = [a[0] for a in json.load(open(path))["annotations"]]
    items = list(mod.read_instances(ROOT, "validation"))
    good = [i for i in items if isinstance(i, SourceInstance)]
    bad = [i for i in items if isinstance(i, Reject)]
    present = {n.rsplit(".", 1)[0]: n for n in os.listdir(os.path.join(ROOT, "images", "val"))}
    assert [g.source_id for g in good] == ["30355", "30357"]
    for inst in good:
        story = sorted((a for a in anns if a["story_id"] == inst.source_id), key=lambda a: a["worker_arranged_photo_order"])
        assert len(story) == 5 and inst.split == "validation" and inst.inputs == ""
        assert inst.outputs == " ".join(a["text"] for a in story)
        assert inst.image_paths == [os.path.join(ROOT, "images", "val", present[a["photo_flickr_id"]]) for a in story]
        assert inst.meta["photo_flickr_ids"] == [a["photo_flickr_id"] for a in story]
        assert inst.meta["original_texts"] == [a["original_text"] for a in story]
    assert good[0].outputs.startswith("our landmark tree") and good[0].image_paths[4].endswith("1741587.png")
    assert [r.source for r in bad] == [f"{path}#story_id=30356", f"{path}#story_id=30358"]
    assert "missing image file for photo 1741699" in bad[0].reason
    assert "expected photo orders 0..4" in bad[1].reason


def test_missing_split_file_is_one_reject():
    items = list(mod.read_instances(ROOT, "train"))
    assert len(items) == 1 and isinstance(items[0], Reject) and "train.story-in-sequence.json" in items[0].source
