import json
import os

from ying.data.instructions import load_pool
from ying.data.schema import Reject, SourceInstance
from ying.data.tasks import get_task

ROOT = os.path.join(os.path.dirname(__file__), "fixtures", "winoground")
mod = get_task("winoground")


def test_spec_and_pool():
    assert (mod.SPEC.category, mod.SPEC.lang, mod.SPEC.splits) == ("reasoning", "en", ("test",))
    pool = load_pool("winoground")
    assert len(pool) == 10 and len(set(pool)) == 10


def test_matches_examples_file():
    path = os.path.join(ROOT, "examples.jsonl")
    recs = [json.loads(l) for l in open(path, encoding="utf-8")]
    items = list(mod.read_instances(ROOT, "test"))
    good = [i for i in items if isinstance(i, SourceInstance)]
    bad = [i for i in items if isinstance(i, Reject)]
    assert len(good) == 4
    swaps = set()
    for inst, rec in zip(good, recs):
        assert inst.split == "test" and inst.source_id == str(rec["id"])
        assert inst.image_paths == [os.path.join(ROOT, "images", rec["image_0"] + ".png"),
                                    os.path.join(ROOT, "images", rec["image_1"] + ".png")]
        a, b = inst.inputs.split("\n")
        swapped = a == f"(A) {rec['caption_1']}"
        swaps.add(swapped)
        first, second = ("B", "A") if swapped else ("A", "B")
        assert (a, b) == ((f"(A) {rec['caption_1']}", f"(B) {rec['caption_0']}") if swapped else (f"(A) {rec['caption_0']}", f"(B) {rec['caption_1']}"))
        assert inst.outputs == f"First image: ({first}) {rec['caption_0']}\nSecond image: ({second}) {rec['caption_1']}"
        assert inst.meta["caption_0"] == rec["caption_0"] and inst.meta["tag"] == rec["tag"] and inst.meta["id"] == rec["id"]
    assert swaps == {True, False}  # the right letter for the first image varies
    assert [r.source for r in bad] == [f"{path}:5", f"{path}:6"]
    assert "missing image file images/ex_4_img_0.png" in bad[0].reason
    assert "'image_1'" in bad[1].reason or "'caption_1'" in bad[1].reason
