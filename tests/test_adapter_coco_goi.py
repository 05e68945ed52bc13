"""COCO-GOI (grounded object identification) through the real adapter, on a hand-written fixture
in COCO's release layout (not the mini-world's): ``annotations/instances_{train,val}2014.json``
with the release's key order ``info, images, licenses, annotations, categories`` (categories
last, so a streaming reader must not need them before the annotations), images ``{license,
file_name, coco_url, height, width, date_captured, flickr_url, id}``, annotations
``{segmentation, area, iscrowd, image_id, bbox: [x, y, w, h], category_id, id}`` (a crowd region
with an RLE segmentation among them), categories ``{supercategory, id, name}`` with COCO's gaps in
ids; pictures in ``train2014/`` and ``val2014/``.

Format checked with the search tool (docs corpus): COCO's "Data format" page
(cocodataset.github.io/dataset/format-data.htm: info, images, annotations, licenses; image and
object-annotation fields; iscrowd=1 regions use RLE; bbox as [x, y, width, height]).
"""

import json
import os

from ying.data.instructions import load_pool
from ying.data.schema import Reject, SourceInstance
from ying.data.tasks import get_task
from ying.data.tasks._options import LETTERS

ROOT = os.path.join(os.path.dirname(__file__), "fixtures", "coco-goi")
TASK = "coco-goi"
SUB = {"train": "train2014", "validation": "val2014"}


def run(split):
    items = list(get_task(TASK).read_instances(ROOT, split))
    assert all(isinstance(i, (SourceInstance, Reject)) for i in items)
    return [i for i in items if isinstance(i, SourceInstance)], [i for i in items if isinstance(i, Reject)]


def test_spec_pool_and_the_release_key_order():
    spec = get_task(TASK).SPEC
    assert (spec.category, spec.lang, spec.splits, spec.rephrase) == ("classification", "en", ("train", "validation"), False)
    assert len(set(load_pool(TASK))) == 10
    data = json.load(open(os.path.join(ROOT, "annotations", "instances_train2014.json")))
    assert list(data) == ["info", "images", "licenses", "annotations", "categories"]


def test_one_instance_per_object_with_its_box_and_lettered_options():
    for split, sub in SUB.items():
        path = os.path.join(ROOT, "annotations", f"instances_{sub}.json")
        data = json.load(open(path))
        names = {c["id"]: c["name"] for c in data["categories"]}
        images = {im["id"]: im for im in data["images"]}
        good, _ = run(split)
        wanted = [(i, a) for i, a in enumerate(data["annotations"])
                  if a["bbox"][0] + a["bbox"][2] <= images[a["image_id"]]["width"]]
        assert len(good) == len(wanted) > 0
        for inst, (i, ann) in zip(good, wanted):
            gold = names[ann["category_id"]]
            options = inst.meta["options"]
            assert inst.split == split and inst.source_id == str(ann["id"]) and inst.source == f"{path}#annotations[{i}]"
            assert len(options) == 5 and gold in options and set(options) <= set(names.values())
            assert inst.inputs == "Options: " + " ".join(f"({LETTERS[k]}) {o}" for k, o in enumerate(options))
            assert inst.outputs == f"({LETTERS[options.index(gold)]}) {gold}"
            assert inst.boxes == [ann["bbox"]] and all(isinstance(v, float) for v in inst.boxes[0])
            assert inst.image_paths == [os.path.join(ROOT, sub, images[ann["image_id"]]["file_name"])]
            assert (inst.meta["annotation_id"], inst.meta["image_id"], inst.meta["category"]) == (ann["id"], ann["image_id"], gold)
    train, _ = run("train")
    assert [i.meta["category"] for i in train] == ["chair", "person", "dog"]  # the crowd region is an instance too
    assert [i.meta["options"] for i in run("train")[0]] == [i.meta["options"] for i in train]  # stable order


def test_a_box_past_the_image_edge_is_rejected():
    _, bad = run("train")
    assert len(bad) == 1 and bad[0].reason == "box [50.0, 2.0, 20.0, 18.0] outside the 60x40 image"
    assert bad[0].source.endswith("instances_train2014.json#annotations[3]")
