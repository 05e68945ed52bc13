import json
import os

from ying.data.instructions import load_pool
from ying.data.schema import Reject, SourceInstance
from ying.data.tasks import get_task

ROOT = os.path.join(os.path.dirname(__file__), "fixtures", "vcr")
mod = get_task("vcr")


def read(split):
    items = list(mod.read_instances(ROOT, split))
    return [i for i in items if isinstance(i, SourceInstance)], [i for i in items if isinstance(i, Reject)]


def test_spec_and_pool():
    assert (mod.SPEC.category, mod.SPEC.lang, mod.SPEC.splits) == ("reasoning", "en", ("train", "validation"))
    pool = load_pool("vcr")
    assert len(pool) == 10 and len(set(pool)) == 10


def test_naming_and_rendering():
    assert mod.object_names(["person", "person", "car", "wine glass", "person"]) == ["person1", "person2", "car1", "wineglass1", "person3"]
    mentioned = []
    names = ["person1", "person2", "car1"]
    assert mod.render(["Why", "are", [0, 1, 2], "here", "?"], names, mentioned) == "Why are person1, person2 and car1 here?"
    assert mod.render(["She", "does", "n't", "know", [1], "'s", "name", "."], names, mentioned) == "She doesn't know person2's name."
    assert mentioned == [0, 1, 2]


def test_validation_matches_jsonl():
    path = os.path.join(ROOT, "val.jsonl")
    recs = [json.loads(l) for l in open(path, encoding="utf-8")]
    good, bad = read("validation")
    assert [g.source_id for g in good] == ["val-0", "val-1"]
    letters = "ABCD"
    for inst, rec in zip(good, recs):
        meta = json.load(open(os.path.join(ROOT, "vcr1images", rec["metadata_fn"])))
        assert inst.split == "validation" and inst.meta["annot_id"] == rec["annot_id"]
        assert inst.image_paths == [os.path.join(ROOT, "vcr1images", rec["img_fn"])]
        question, options = inst.inputs.split("\n")
        choices = inst.meta["answer_choices"]
        assert options == " ".join(f"({letters[i]}) {c}" for i, c in enumerate(choices)).join(["Options: ", ""])
        assert inst.outputs == f"({letters[rec['answer_label']]}) {choices[rec['answer_label']]}"
        assert inst.meta["original_answer"] == choices[rec["answer_label"]]
        for region in inst.meta["regions"]:
            x1, y1, x2, y2, _ = meta["boxes"][region["object_index"]]
            assert region["box"] == [x1, y1, x2 - x1, y2 - y1]
            assert region["name"] == mod.object_names(rec["objects"])[region["object_index"]]
        assert inst.boxes == [[r["box"] for r in inst.meta["regions"]]]
        assert inst.box_labels == [[r["name"] for r in inst.meta["regions"]]]
    q0 = good[0]
    assert q0.inputs.split("\n")[0] == "Does person2 feel comfortable?"
    assert q0.meta["answer_choices"][0] == "No, person2 doesn't."
    assert q0.meta["answer_choices"][2] == "person1 and person2 are in a car."
    assert q0.meta["rationale"] == "person2 is frowning."
    # order of first mention: question, then answers, then rationales; every referenced object named once
    assert [r["name"] for r in q0.meta["regions"]] == ["person2", "person1", "car1", "wineglass1"]
    assert good[1].inputs.startswith("Why is person1 holding wineglass1?")
    assert good[1].outputs == "(B) He is thirsty."
    assert [r.source for r in bad] == [f"{path}:3", f"{path}:4"]
    assert "dog1" in bad[0].reason and "outside the 24x24 image" in bad[0].reason
    assert "missing image file vcr1images/lsmdc_3015_CHARLIE_ST_CLOUD/missing@0.jpg" in bad[1].reason


def test_train():
    good, bad = read("train")
    assert not bad and good[0].outputs == "(D) Unsure." and good[0].meta["rationale"] == "r2"


def test_every_named_region_is_drawn_in_red_on_the_image():
    import io

    from PIL import Image

    from ying.data.build import materialize_record

    inst = next(i for i in get_task("vcr").read_instances(ROOT, "validation") if isinstance(i, SourceInstance))
    record = materialize_record(inst.__dict__, seed=0, frames_per_video=8, max_image_pixels=10**8)
    assert "reason" not in record, record
    drawn = Image.open(io.BytesIO(record["images"][0])).convert("RGB")
    for region in inst.meta["regions"]:
        x, y, w, h = (int(round(v)) for v in region["box"])
        r, g, b = drawn.getpixel((x + w // 2, y))  # middle of the top edge
        assert r > 200 and g < 60 and b < 60, (region["name"], (r, g, b))
