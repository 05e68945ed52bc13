import gzip
import os

from ying.data.instructions import load_pool
from ying.data.schema import Reject, SourceInstance
from ying.data.tasks import get_task

ROOT = os.path.join(os.path.dirname(__file__), "fixtures", "multi30k")
mod = get_task("multi30k")


def read(split):
    items = list(mod.read_instances(ROOT, split))
    return [i for i in items if isinstance(i, SourceInstance)], [i for i in items if isinstance(i, Reject)]


def test_spec_and_pool():
    assert (mod.SPEC.category, mod.SPEC.lang, mod.SPEC.splits) == ("generation", "en", ("train", "validation", "test"))
    pool = load_pool("multi30k")
    assert len(pool) == 10 and len(set(pool)) == 10


def test_validation_matches_aligned_files():
    en_path = os.path.join(ROOT, "raw", "val.en.gz")
    en = gzip.open(en_path).read().decode().splitlines()
    de = gzip.open(os.path.join(ROOT, "raw", "val.de.gz")).read().splitlines()
    images = open(os.path.join(ROOT, "image_splits", "val.txt")).read().split()
    good, bad = read("validation")
    assert len(good) == 2
    for n, inst in enumerate(good, start=1):
        assert inst.split == "validation" and inst.source_id == str(n)
        assert inst.inputs == en[n - 1] and inst.outputs == de[n - 1].decode("utf-8")
        assert inst.image_paths == [os.path.join(ROOT, "flickr30k-images", images[n - 1])]
        assert inst.meta["image"] == images[n - 1] and inst.source == f"{en_path}:{n}"
    assert "Mädchen" in good[1].outputs
    assert [r.source for r in bad] == [f"{en_path}:3", f"{en_path}:4"]
    assert "not UTF-8" in bad[0].reason and "missing image file flickr30k-images/103205630.jpg" in bad[1].reason


def test_plain_files_and_misaligned_split():
    good, bad = read("train")
    assert not bad and good[0].inputs.startswith("Two young guys") and good[0].outputs.startswith("Zwei junge")
    assert good[0].source == os.path.join(ROOT, "raw", "train.en") + ":1"
    good, bad = read("test")
    assert not good and len(bad) == 1 and "not aligned" in bad[0].reason and "test_2016_flickr" in bad[0].source
