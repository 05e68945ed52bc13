import json
import os
from collections import Counter

from ying.data.instructions import load_pool
from ying.data.schema import Reject, SourceInstance
from ying.data.tasks import get_task

ROOT = os.path.join(os.path.dirname(__file__), "fixtures", "text-vqa")
TASK = "text-vqa"
FILES = {"train": "TextVQA_0.5.1_train.json", "validation": "TextVQA_0.5.1_val.json"}


def run(split, root=ROOT):
    items = list(get_task(TASK).read_instances(root, split))
    assert all(isinstance(i, (SourceInstance, Reject)) for i in items)
    return [i for i in items if isinstance(i, SourceInstance)], [i for i in items if isinstance(i, Reject)]


def test_spec_and_pool():
    spec = get_task(TASK).SPEC
    assert (spec.category, spec.lang, spec.splits, spec.rephrase) == ("vqa", "en", ("train", "validation"), True)
    assert len(set(load_pool(TASK))) == 10


def test_splits_match_raw_files():
    for split, name in FILES.items():
        data = json.load(open(os.path.join(ROOT, name), encoding="utf-8"))["data"]
        good, bad = run(split)
        expected = [r for r in data if os.path.exists(os.path.join(ROOT, "train_images", r["image_id"] + ".jpg"))]
        assert len(good) == len(expected) > 0
        for inst, r in zip(good, expected):
            counts = Counter(a.strip() for a in r["answers"])
            top = max(counts.values())
            first_top = next(a.strip() for a in r["answers"] if counts[a.strip()] == top)
            assert inst.split == split and inst.source_id == str(r["question_id"])
            assert (inst.inputs, inst.outputs) == (r["question"], first_top)
            assert inst.image_paths == [os.path.join(ROOT, "train_images", r["image_id"] + ".jpg")]
            assert inst.meta["original_answer"] == first_top and inst.meta["answers"] == r["answers"]
            assert inst.meta["image_id"] == r["image_id"] and inst.meta["question_id"] == r["question_id"]
            assert inst.meta.get("ocr_tokens") == r.get("ocr_tokens")
    train, _ = run("train")
    assert train[0].outputs == "nokia"  # "nokia " counts as "nokia"
    assert train[1].outputs == "copenhagen" and train[1].meta["ocr_tokens"] == ["COPENHAGEN", "Thursday"]  # 5-5 tie


def test_missing_image_is_rejected():
    good, bad = run("validation")
    assert len(good) == 1 and len(bad) == 1
    assert bad[0].reason == "missing image file train_images/00b5b0d0b0b0b0b0.jpg"
    assert bad[0].source == os.path.join(ROOT, FILES["validation"]) + "#data[1]"


def test_broken_json_is_one_reject(tmp_path):
    (tmp_path / FILES["train"]).write_text("{oops")
    good, bad = run("train", str(tmp_path))
    assert not good and len(bad) == 1 and "not valid JSON" in bad[0].reason
