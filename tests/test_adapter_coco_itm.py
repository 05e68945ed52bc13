import json
import os

from ying.data.instructions import load_pool
from ying.data.schema import Reject, SourceInstance
from ying.data.tasks import get_task

KEY = "coco-itm"
ROOT = os.path.join(os.path.dirname(__file__), "fixtures", KEY)


def run(split):
    items = list(get_task(KEY).read_instances(ROOT, split))
    return [i for i in items if isinstance(i, SourceInstance)], [i for i in items if isinstance(i, Reject)]


def test_spec_and_pool():
    spec = get_task(KEY).SPEC
    assert (spec.category, spec.lang, spec.splits, spec.rephrase) == ("classification", "en", ("train", "validation"), False)
    pool = load_pool(KEY)
    assert len(pool) == 10 and len(set(pool)) == 10


def test_records_match_caption_files():
    for split, sub in (("train", "train2014"), ("validation", "val2014")):
        data = json.load(open(os.path.join(ROOT, "annotations", f"captions_{sub}.json")))
        first, captions_of = {}, {}
        for a in data["annotations"]:
            first.setdefault(a["image_id"], a)
            captions_of.setdefault(a["image_id"], set()).add(a["caption"])
        expected = [im for im in data["images"] if im["id"] in first and os.path.exists(os.path.join(ROOT, sub, im["file_name"]))]
        good, _ = run(split)
        assert len(good) == len(expected) > 0
        for inst, im in zip(good, expected):
            gold = first[im["id"]]["caption"]
            options = inst.meta["options"]
            assert inst.split == split and inst.source_id == str(im["id"])
            assert inst.image_paths == [os.path.join(ROOT, sub, im["file_name"])]
            assert inst.meta["original_answer"] == gold and inst.meta["caption_id"] == first[im["id"]]["id"]
            assert gold in options and len(set(options)) == len(options) >= 2
            n_others = len({a["caption"] for a in data["annotations"]} - captions_of[im["id"]])
            assert len(options) == min(5, 1 + n_others)
            # every distractor is a caption of some other image
            for o in options:
                if o != gold:
                    assert o not in captions_of[im["id"]]
            assert im["id"] not in inst.meta["distractor_image_ids"]
            letter = "ABCDE"[options.index(gold)]
            assert inst.outputs == f"({letter}) {gold}"
            assert inst.inputs == "Options: " + " ".join(f"({'ABCDE'[i]}) {o}" for i, o in enumerate(options))


def test_bad_records_are_rejected_and_options_stable():
    good, bad = run("train")
    assert len(bad) == 2
    assert bad[0].source.endswith("captions_train2014.json#images[4]") and "no caption for image 200001" in bad[0].reason
    assert bad[1].source.endswith("captions_train2014.json#images[5]") and "missing image file" in bad[1].reason
    assert [i.inputs for i in run("train")[0]] == [i.inputs for i in good]
    assert len({i.outputs[1] for i in good}) > 1  # the gold letter varies
