import csv
import os

from ying.data.instructions import load_pool
from ying.data.schema import Reject, SourceInstance
from ying.data.tasks import get_task

KEY = "snli-ve"
ROOT = os.path.join(os.path.dirname(__file__), "fixtures", KEY)
FILES = {"train": "esnlive_train.csv", "validation": "esnlive_dev.csv", "test": "esnlive_test.csv"}
LABELS = {"entailment", "neutral", "contradiction"}


def run(split):
    items = list(get_task(KEY).read_instances(ROOT, split))
    return [i for i in items if isinstance(i, SourceInstance)], [i for i in items if isinstance(i, Reject)]


def test_spec_and_pool():
    spec = get_task(KEY).SPEC
    assert (spec.category, spec.lang, spec.splits, spec.rephrase) == ("classification", "en", ("train", "validation", "test"), False)
    pool = load_pool(KEY)
    assert len(pool) == 10 and len(set(pool)) == 10


def test_records_match_csv():
    for split, name in FILES.items():
        rows = list(csv.DictReader(open(os.path.join(ROOT, name), newline="", encoding="utf-8")))
        expected = [r for r in rows if r["gold_label"] in LABELS
                    and os.path.exists(os.path.join(ROOT, "flickr30k_images", r["Flickr30kID"]))]
        good, _ = run(split)
        assert len(good) == len(expected) > 0
        for inst, r in zip(good, expected):
            options = inst.meta["options"]
            assert set(options) == LABELS
            letter = "ABC"[options.index(r["gold_label"])]
            assert inst.split == split and inst.source_id == r["pairID"]
            assert inst.inputs == f"Hypothesis: {r['hypothesis']}\nOptions: " + " ".join(f"({'ABC'[i]}) {o}" for i, o in enumerate(options))
            assert inst.outputs == f"({letter}) {r['gold_label']}"
            assert inst.image_paths == [os.path.join(ROOT, "flickr30k_images", r["Flickr30kID"])]
            assert inst.meta["original_answer"] == r["gold_label"] and inst.meta["explanation"] == r["explanation"]
            assert inst.meta["flickr30k_id"] == r["Flickr30kID"] and inst.meta["row_index"] == r[""]


def test_bad_rows_are_rejected():
    _, bad = run("train")
    assert len(bad) == 2
    assert bad[0].source.endswith("esnlive_train.csv#row4") and "missing image file flickr30k_images/3413244848.jpg" in bad[0].reason
    assert bad[1].source.endswith("esnlive_train.csv#row5") and "gold_label '-'" in bad[1].reason


def test_broken_header(tmp_path):
    (tmp_path / "esnlive_dev.csv").write_text("a,b\n1,2\n")
    items = list(get_task(KEY).read_instances(str(tmp_path), "validation"))
    assert len(items) == 1 and isinstance(items[0], Reject) and "header" in items[0].reason
