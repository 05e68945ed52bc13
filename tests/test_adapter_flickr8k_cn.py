"""Flickr8k-CN through the real adapter, on a hand-written fixture in the release's layout (not the
mini-world's): ``data/flickr8kzhc.caption.txt``, one ``<image>.jpg#zhc#<n> <caption>`` per line
(space-separated, UTF-8, LF), grouped by caption number (every image's #0, then every #1); split
lists ``data/flickr8k{train,val,test}.txt`` holding image ids without the extension; the pictures
from Flickr8k in ``Flicker8k_Dataset/`` (the release's own spelling).

Layout checked with the search tool (code corpus): the li-xirong/flickr8kcn repository itself
(README.md; data/flickr8kzhc.caption.txt, whose lines and grouping the fixture follows, with
captions and ids of its own; data/flickr8ktrain.txt); public loaders that split those lines on
whitespace and read ``.../Flicker8k_Dataset/<image>``.
"""

import os

from ying.data.instructions import load_pool
from ying.data.schema import Reject, SourceInstance
from ying.data.tasks import get_task

ROOT = os.path.join(os.path.dirname(__file__), "fixtures", "flickr8k-cn")
TASK = "flickr8k-cn"
CAPTIONS = os.path.join(ROOT, "data", "flickr8kzhc.caption.txt")
LISTS = {"train": "flickr8ktrain.txt", "validation": "flickr8kval.txt", "test": "flickr8ktest.txt"}


def run(split):
    items = list(get_task(TASK).read_instances(ROOT, split))
    assert all(isinstance(i, (SourceInstance, Reject)) for i in items)
    return [i for i in items if isinstance(i, SourceInstance)], [i for i in items if isinstance(i, Reject)]


def test_spec_and_pool():
    spec = get_task(TASK).SPEC
    assert (spec.category, spec.lang, spec.splits, spec.rephrase) == ("chinese", "zh", ("train", "validation", "test"), False)
    assert len(set(load_pool(TASK))) == 10


def test_one_instance_per_chinese_caption_of_the_splits_images():
    lines = open(CAPTIONS, encoding="utf-8").read().splitlines()
    for split, name in LISTS.items():
        ids = open(os.path.join(ROOT, "data", name)).read().split()
        good, _ = run(split)
        wanted = [(n, line) for n, line in enumerate(lines, start=1) if line.split(".jpg#", 1)[0] in ids
                  and os.path.exists(os.path.join(ROOT, "Flicker8k_Dataset", line.split("#", 1)[0]))]
        assert len(good) == len(wanted)
        for inst, (n, line) in zip(good, wanted):
            key, caption = line.split(" ", 1)
            image, kind, k = key.split("#")
            assert inst.split == split and inst.source == f"{CAPTIONS}:{n}" and inst.inputs == ""
            assert inst.outputs == caption and inst.source_id == f"{image[:-4]}-{k}"
            assert inst.image_paths == [os.path.join(ROOT, "Flicker8k_Dataset", image)]
            assert inst.meta == {"image_id": image[:-4], "caption_kind": "zhc", "caption_index": k}
    train, _ = run("train")
    # captions come grouped by number, as in the release: both #0 first, then both #1
    assert [i.source_id for i in train] == ["1000268201_693b08cb0e-0", "1001773457_577c3a7d70-0",
                                            "1000268201_693b08cb0e-1", "1001773457_577c3a7d70-1"]
    assert train[0].outputs == "一个穿着粉色裙子的小女孩走上木头台阶。"


def test_an_image_in_no_split_is_skipped_and_a_missing_picture_rejected():
    assert all(not b for b in (run("train")[1], run("validation")[1]))
    good, bad = run("test")
    assert not good and [b.reason for b in bad] == ["missing image file Flicker8k_Dataset/3385593926_d3e9c21170.jpg"] * 2
