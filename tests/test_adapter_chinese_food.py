import os
import re
import zipfile

from ying.data.instructions import load_pool
from ying.data.schema import Reject, SourceInstance
from ying.data.tasks import get_task
from ying.data.tasks.chinese_food import MAX_OPTIONS, read_xlsx_rows

ROOT = os.path.join(os.path.dirname(__file__), "fixtures", "chinese-food")
TASK = "chinese-food"
LISTS = {"train": ("train_list.txt", "train"), "validation": ("val_list.txt", "val"), "test": ("test_truth_list.txt", "test")}


def read(split):
    items = list(get_task(TASK).read_instances(ROOT, split))
    assert all(isinstance(i, (SourceInstance, Reject)) for i in items)
    return [i for i in items if isinstance(i, SourceInstance)], [i for i in items if isinstance(i, Reject)]


def raw_classes():
    """The class sheet parsed independently: shared strings by index, rows of (A, B, C)."""
    with zipfile.ZipFile(os.path.join(ROOT, "class_names.xlsx")) as z:
        shared = re.findall(r"<t>(.*?)</t>", z.read("xl/sharedStrings.xml").decode())
        sheet = z.read("xl/worksheets/sheet1.xml").decode()
    out = {}
    for idx, zh, en in re.findall(r'<c r="A\d+"><v>(\d+)</v></c><c r="B\d+" t="s"><v>(\d+)</v></c><c r="C\d+" t="s"><v>(\d+)</v></c>', sheet):
        out[int(idx)] = (shared[int(zh)], shared[int(en)])
    return out


def test_spec_and_pool():
    spec = get_task(TASK).SPEC
    assert (spec.category, spec.lang, spec.splits, spec.rephrase) == ("chinese", "zh", ("train", "validation", "test"), False)
    pool = load_pool(TASK)
    assert len(pool) == 10 and len(set(pool)) == 10


def test_xlsx_reader_matches_sheet():
    classes = raw_classes()
    rows = read_xlsx_rows(open(os.path.join(ROOT, "class_names.xlsx"), "rb").read())
    assert {int(r[0]): (r[1], r[2]) for r in rows} == classes and len(classes) == 12


def test_records_match_lists():
    classes = raw_classes()
    zh_names = {zh for zh, _ in classes.values()}
    letters = set()
    for split, (list_name, folder) in LISTS.items():
        expected = []
        for line in open(os.path.join(ROOT, "release_data", list_name)).read().splitlines():
            rel, label = line.split()
            path = os.path.join(ROOT, "release_data", folder, rel)
            if int(label) in classes and os.path.exists(path):
                expected.append((rel, int(label), path))
        good, _ = read(split)
        assert len(good) == len(expected) > 0
        for inst, (rel, label, path) in zip(good, expected):
            zh, en = classes[label]
            assert inst.split == split and inst.image_paths == [path]
            assert inst.inputs.startswith("选项：(A) ")
            options = inst.meta["options"]
            assert zh in options and len(options) == MAX_OPTIONS and set(options) <= zh_names
            letter = "ABCDEFGHIJ"[options.index(zh)]
            assert inst.outputs == f"({letter}) {zh}" and f"({letter}) {zh}" in inst.inputs
            assert (inst.meta["label"], inst.meta["label_zh"], inst.meta["label_en"]) == (label, zh, en)
            assert inst.source_id == rel[:-4].replace("/", "-")
            letters.add(letter)
    assert len(letters) > 1
    again, _ = read("train")
    assert [i.inputs for i in again] == [i.inputs for i in read("train")[0]]


def test_bad_records_are_rejected():
    good, bad = read("train")
    assert len(good) == 3 and len(bad) == 1
    assert bad[0].source.endswith("release_data/train_list.txt:4")
    assert "missing image file release_data/train/005/000200.jpg" in bad[0].reason
    good, bad = read("test")
    assert len(good) == 1 and len(bad) == 1
    assert bad[0].source.endswith("test_truth_list.txt:2") and "label 250 is not in class_names.xlsx" in bad[0].reason
