import csv
import os

from ying.data.instructions import load_pool
from ying.data.schema import Reject, SourceInstance
from ying.data.tasks import get_task

KEY = "mocheg"
ROOT = os.path.join(os.path.dirname(__file__), "fixtures", KEY)
DIRS = {"train": "train", "validation": "val", "test": "test"}
SHOWN = {"supported": "supported", "refuted": "refuted", "NEI": "not enough information"}


def run(split):
    items = list(get_task(KEY).read_instances(ROOT, split))
    return [i for i in items if isinstance(i, SourceInstance)], [i for i in items if isinstance(i, Reject)]


def test_spec_and_pool():
    spec = get_task(KEY).SPEC
    assert (spec.category, spec.lang, spec.splits, spec.rephrase) == ("classification", "en", ("train", "validation", "test"), False)
    pool = load_pool(KEY)
    assert len(pool) == 10 and len(set(pool)) == 10


def test_records_match_corpus_and_images():
    for split, d in DIRS.items():
        rows = list(csv.DictReader(open(os.path.join(ROOT, d, "Corpus2.csv"), newline="", encoding="utf-8")))
        claims = {}
        for r in rows:
            claims.setdefault(r["claim_id"], r)
        images = sorted(os.listdir(os.path.join(ROOT, d, "images")))
        expected = []
        for cid, r in claims.items():
            proofs = [n for n in images if n.startswith(f"{cid}-proof-")]
            if proofs and r["cleaned_truthfulness"] in SHOWN:
                expected.append((cid, r, proofs))
        good, _ = run(split)
        assert len(good) == len(expected) > 0
        for inst, (cid, r, proofs) in zip(good, expected):
            gold = SHOWN[r["cleaned_truthfulness"]]
            options = inst.meta["options"]
            assert set(options) == set(SHOWN.values())
            assert inst.split == split and inst.source_id == cid and inst.meta["claim_id"] == cid
            assert inst.inputs == f"Claim: {r['Claim']}\nOptions: " + " ".join(f"({'ABC'[i]}) {o}" for i, o in enumerate(options))
            assert inst.outputs == f"({'ABC'[options.index(gold)]}) {gold}"
            assert inst.image_paths == [os.path.join(ROOT, d, "images", n) for n in proofs]
            assert inst.meta["original_answer"] == r["cleaned_truthfulness"] and inst.meta["snopes_url"] == r["Snopes URL"]
    # a claim spread over several CSV rows is one instance, with all its proof images in order
    first = run("train")[0][0]
    assert first.source_id == "9484" and [os.path.basename(p) for p in first.image_paths] == ["9484-proof-01-shark.jpg", "9484-proof-02.jpg"]


def test_bad_claims_are_rejected():
    _, bad = run("train")
    assert len(bad) == 2
    assert bad[0].source.endswith(os.path.join("train", "Corpus2.csv") + "#row5") and "no evidence image" in bad[0].reason
    assert bad[1].source.endswith("Corpus2.csv#row6") and "'mixture'" in bad[1].reason


def test_missing_corpus_file(tmp_path):
    items = list(get_task(KEY).read_instances(str(tmp_path), "test"))
    assert len(items) == 1 and isinstance(items[0], Reject) and "missing file" in items[0].reason
