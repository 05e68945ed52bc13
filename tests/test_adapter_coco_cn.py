import os

from ying.data.instructions import load_pool
from ying.data.schema import Reject, SourceInstance
from ying.data.tasks import get_task

ROOT = os.path.join(os.path.dirname(__file__), "fixtures", "coco-cn")
TASK = "coco-cn"
SPLIT_FILE = {"train": "coco-cn_train.txt", "validation": "coco-cn_val.txt", "test": "coco-cn_test.txt"}


def read(split, root=ROOT):
    items = list(get_task(TASK).read_instances(root, split))
    assert all(isinstance(i, (SourceInstance, Reject)) for i in items)
    return [i for i in items if isinstance(i, SourceInstance)], [i for i in items if isinstance(i, Reject)]


def test_spec_and_pool():
    spec = get_task(TASK).SPEC
    assert (spec.category, spec.lang, spec.splits, spec.rephrase) == ("chinese", "zh", ("train", "validation", "test"), False)
    pool = load_pool(TASK)
    assert len(pool) == 10 and len(set(pool)) == 10


def test_records_match_caption_file():
    lines = open(os.path.join(ROOT, "imageid.human-written-caption.txt"), encoding="utf-8").read().splitlines()
    for split, name in SPLIT_FILE.items():
        ids = open(os.path.join(ROOT, name)).read().split()
        expected = []
        for line in lines:
            if "\t" not in line:
                continue
            key, caption = line.split("\t")
            image_id, n = key.split("#")
            sub = image_id.split("_")[1]
            if image_id in ids and os.path.exists(os.path.join(ROOT, sub, image_id + ".jpg")):
                expected.append((image_id, n, caption, sub))
        good, _ = read(split)
        assert len(good) == len(expected) > 0
        for inst, (image_id, n, caption, sub) in zip(good, expected):
            assert inst.split == split and inst.inputs == "" and inst.outputs == caption
            assert inst.image_paths == [os.path.join(ROOT, sub, image_id + ".jpg")]
            assert inst.source_id == f"{image_id}-{n}" and inst.meta == {"image_id": image_id, "caption_index": n}
    # the val2014 image listed in the train split is read from val2014/
    good, _ = read("train")
    assert any("/val2014/" in i.image_paths[0] for i in good)


def test_bad_records_are_rejected():
    good, bad = read("train")
    assert len(good) == 3 and len(bad) == 2
    assert bad[0].source.endswith("imageid.human-written-caption.txt:6")
    assert "missing image file train2014/COCO_train2014_000000000025.jpg" in bad[0].reason
    assert bad[1].source.endswith("imageid.human-written-caption.txt:7") and "expected '<image id>#<n>" in bad[1].reason


def test_non_utf8_line_is_rejected(tmp_path):
    import shutil

    root = tmp_path / "coco-cn"
    shutil.copytree(ROOT, root)
    with open(root / "imageid.human-written-caption.txt", "ab") as f:
        f.write(b"COCO_val2014_000000000136#1\t" + "坏的".encode("gbk") + b"\n")
    good, bad = read("validation", str(root))
    assert len(good) == 1 and len(bad) == 1 and "not UTF-8" in bad[0].reason and bad[0].source.endswith(":8")
