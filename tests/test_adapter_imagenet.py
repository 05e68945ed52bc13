import csv
import os

from ying.data.instructions import load_pool
from ying.data.schema import Reject, SourceInstance
from ying.data.tasks import get_task

KEY = "imagenet"
ROOT = os.path.join(os.path.dirname(__file__), "fixtures", KEY)
DATA = os.path.join(ROOT, "ILSVRC", "Data", "CLS-LOC")


def run(split):
    items = list(get_task(KEY).read_instances(ROOT, split))
    return [i for i in items if isinstance(i, SourceInstance)], [i for i in items if isinstance(i, Reject)]


def synsets():
    out = {}
    for line in open(os.path.join(ROOT, "LOC_synset_mapping.txt")):
        wnid, names = line.strip().split(" ", 1)
        out[wnid] = names.split(", ")
    return out


def check(inst, wnid, syn):
    gold = syn[wnid][0]
    options = inst.meta["options"]
    assert len(options) == 10 and gold in options and len(set(options)) == 10
    assert set(options) <= {v[0] for v in syn.values()}
    letter = "ABCDEFGHIJ"[options.index(gold)]
    assert inst.outputs == f"({letter}) {gold}" and f"({letter}) {gold}" in inst.inputs
    assert inst.inputs.startswith("Options: (A) ")
    assert inst.meta["wnid"] == wnid and inst.meta["original_answer"] == gold and inst.meta["synonyms"] == syn[wnid]


def test_spec_and_pool():
    spec = get_task(KEY).SPEC
    assert (spec.category, spec.lang, spec.splits, spec.rephrase) == ("classification", "en", ("train", "validation"), False)
    pool = load_pool(KEY)
    assert len(pool) == 10 and len(set(pool)) == 10


def test_train_matches_folders():
    syn = synsets()
    expected = [(w, f) for w in sorted(os.listdir(os.path.join(DATA, "train"))) if w in syn
                for f in sorted(os.listdir(os.path.join(DATA, "train", w)))]
    good, bad = run("train")
    assert len(good) == len(expected) == 3
    for inst, (wnid, f) in zip(good, expected):
        assert inst.split == "train" and inst.source_id == f[:-5]
        assert inst.image_paths == [os.path.join(DATA, "train", wnid, f)]
        check(inst, wnid, syn)
    assert len(bad) == 1 and bad[0].source.endswith("n99999999") and "not a synset" in bad[0].reason


def test_validation_matches_solution_csv():
    syn = synsets()
    rows = list(csv.reader(open(os.path.join(ROOT, "LOC_val_solution.csv"))))[1:]
    expected = [r for r in rows if r[1].split()[0] in syn and os.path.exists(os.path.join(DATA, "val", r[0] + ".JPEG"))]
    good, bad = run("validation")
    assert len(good) == len(expected) == 2
    for inst, row in zip(good, expected):
        assert inst.split == "validation" and inst.source_id == row[0] and inst.meta["image_id"] == row[0]
        assert inst.image_paths == [os.path.join(DATA, "val", row[0] + ".JPEG")]
        check(inst, row[1].split()[0], syn)
    assert len(bad) == 2
    assert bad[0].source.endswith("LOC_val_solution.csv:4") and "unknown synset 'n12345678'" in bad[0].reason
    assert bad[1].source.endswith("LOC_val_solution.csv:5") and "missing image file" in bad[1].reason
