import csv
import os

from ying.data.instructions import load_pool
from ying.data.schema import Reject, SourceInstance
from ying.data.tasks import get_task

KEY = "iqa"
ROOT = os.path.join(os.path.dirname(__file__), "fixtures", KEY)
SETS = {"train": "training", "validation": "validation", "test": "test"}
LEVELS = ["excellent", "good", "fair", "poor", "bad"]


def level(mos):
    return LEVELS[0] if mos >= 80 else LEVELS[1] if mos >= 60 else LEVELS[2] if mos >= 40 else LEVELS[3] if mos >= 20 else LEVELS[4]


def run(split):
    items = list(get_task(KEY).read_instances(ROOT, split))
    return [i for i in items if isinstance(i, SourceInstance)], [i for i in items if isinstance(i, Reject)]


def test_spec_and_pool():
    spec = get_task(KEY).SPEC
    assert (spec.category, spec.lang, spec.splits, spec.rephrase) == ("classification", "en", ("train", "validation", "test"), False)
    pool = load_pool(KEY)
    assert len(pool) == 10 and len(set(pool)) == 10


def test_records_match_score_csv():
    rows = list(csv.DictReader(open(os.path.join(ROOT, "koniq10k_distributions_sets.csv"), newline="")))
    seen_levels = set()
    for split, set_name in SETS.items():
        expected = []
        for r in rows:
            if r["set"] != set_name or not os.path.exists(os.path.join(ROOT, "1024x768", r["image_name"])):
                continue
            try:
                expected.append((r, float(r["MOS"])))
            except ValueError:
                pass
        good, _ = run(split)
        assert len(good) == len(expected) > 0
        for inst, (r, mos) in zip(good, expected):
            gold = level(mos)
            seen_levels.add(gold)
            assert inst.split == split and inst.source_id == r["image_name"][:-4]
            assert inst.inputs == "Options: (A) excellent (B) good (C) fair (D) poor (E) bad"
            assert inst.outputs == f"({'ABCDE'[LEVELS.index(gold)]}) {gold}"
            assert inst.image_paths == [os.path.join(ROOT, "1024x768", r["image_name"])]
            assert inst.meta["original_answer"] == gold and inst.meta["mos"] == mos and inst.meta["set"] == set_name
    assert seen_levels == set(LEVELS)


def test_bad_rows_are_rejected():
    _, bad = run("train")
    assert len(bad) == 2
    assert bad[0].source.endswith("koniq10k_distributions_sets.csv#row4") and "MOS 'n/a'" in bad[0].reason
    assert bad[1].source.endswith("#row5") and "missing image file 1024x768/10099999999.jpg" in bad[1].reason
