"""COCO captions (Karpathy split) through the real adapter, on a hand-written fixture in the
release's own layout, not the mini-world's: one ``dataset_coco.json`` holding
``{"images": [...], "dataset": "coco"}``, each image ``{filepath, sentids, filename, imgid, split,
sentences: [{tokens, raw, imgid, sentid}], cocoid}`` with ``split`` one of train / restval / val /
test, and the pictures in COCO's ``train2014/`` and ``val2014/`` folders (``filepath``).

Layout checked with the search tool (code corpus): the karpathy-splits download listed as
``caption_datasets/dataset_coco.json`` (yxuansu/MAGIC, image_captioning/data/raw_data/README.md); a
loader's dataclasses with exactly these image and sentence fields (cocoid, filename, filepath, imgid,
sentences, sentids, split; imgid, raw, sentid, tokens); loaders that add the ``restval`` ids to the
training ids. The fixture mimics the release's quirks: a restval picture in ``val2014/``, raw captions
with trailing spaces, an image with six captions, a listed image whose file is absent.
"""

import json
import os

from ying.data.instructions import load_pool
from ying.data.schema import Reject, SourceInstance
from ying.data.tasks import get_task

ROOT = os.path.join(os.path.dirname(__file__), "fixtures", "coco")
TASK = "coco"
ANN = os.path.join(ROOT, "dataset_coco.json")


def run(split):
    items = list(get_task(TASK).read_instances(ROOT, split))
    assert all(isinstance(i, (SourceInstance, Reject)) for i in items)
    return [i for i in items if isinstance(i, SourceInstance)], [i for i in items if isinstance(i, Reject)]


def test_spec_and_pool():
    spec = get_task(TASK).SPEC
    assert (spec.category, spec.lang, spec.splits, spec.rephrase) == ("captioning", "en", ("train", "validation", "test"), False)
    assert len(set(load_pool(TASK))) == 10


def test_one_instance_per_caption_with_restval_in_train():
    images = json.load(open(ANN))["images"]
    expect = {"train": ("train", "restval"), "validation": ("val",), "test": ("test",)}
    for split, kp in expect.items():
        good, _ = run(split)
        wanted = [(i, img, s) for i, img in enumerate(images) if img["split"] in kp
                  and os.path.exists(os.path.join(ROOT, img["filepath"], img["filename"])) for s in img["sentences"]]
        assert len(good) == len(wanted) > 0
        for inst, (i, img, sent) in zip(good, wanted):
            assert inst.split == split and inst.inputs == ""
            assert inst.outputs == sent["raw"].strip()  # the release's trailing spaces are not kept
            assert inst.source_id == f"{img['cocoid']}-{sent['sentid']}"
            assert inst.image_paths == [os.path.join(ROOT, img["filepath"], img["filename"])]
            assert inst.meta == {"cocoid": img["cocoid"], "sentid": sent["sentid"], "karpathy_split": img["split"]}
            assert inst.source == f"{ANN}#images[{i}].sentences[{img['sentences'].index(sent)}]"
    train, _ = run("train")
    # restval pictures live in val2014/ and train: the 5 captions of 522418 and the 6 of 318556
    assert [i.meta["cocoid"] for i in train] == [522418] * 5 + [318556] * 6
    assert train[0].image_paths[0].endswith("val2014/COCO_val2014_000000522418.jpg")
    test, _ = run("test")
    assert test[1].outputs == "Someone on a moped on an unpaved road near the hills."


def test_a_listed_image_without_its_file_is_rejected():
    _, bad = run("train")
    assert [(b.source, b.reason) for b in bad] == [
        (f"{ANN}#images[4]", "missing image file train2014/COCO_train2014_000000000009.jpg")]
    assert run("validation")[1] == [] and run("test")[1] == []
