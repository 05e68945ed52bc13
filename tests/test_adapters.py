import json
import os
import shutil

import pytest

from ying.data.miniworld import generate_miniworld
from ying.data.schema import Reject, SourceInstance
from ying.data.tasks import TASKS, TaskSpec, get_task
from ying.data.tasks.coco_goi import LETTERS

from test_miniworld import TASKS as ALL, small_cfg


@pytest.fixture()
def world(tmp_path):
    return generate_miniworld(str(tmp_path), small_cfg(6), seed=1, tasks=ALL)


def instances(task, root, split):
    items = list(get_task(task).read_instances(root, split))
    assert all(isinstance(i, (SourceInstance, Reject)) for i in items)
    return [i for i in items if isinstance(i, SourceInstance)], [i for i in items if isinstance(i, Reject)]


def test_registry_and_specs():
    assert {"coco", "vqa-v2", "coco-goi", "flickr8k-cn", "msrvtt-qa"} <= set(TASKS)
    expect = {"coco": ("captioning", "en"), "vqa-v2": ("vqa", "en"), "coco-goi": ("classification", "en"),
              "flickr8k-cn": ("chinese", "zh"), "msrvtt-qa": ("video", "en")}
    for key, mod in TASKS.items():
        if key not in expect:
            continue
        assert isinstance(mod.SPEC, TaskSpec) and mod.SPEC.key == key
        assert (mod.SPEC.category, mod.SPEC.lang) == expect[key]
    assert get_task("vqa-v2").SPEC.splits == ("train", "validation")
    with pytest.raises(KeyError, match="known tasks"):
        get_task("nope")


def test_coco_matches_karpathy_file(world):
    root = world["coco"]
    kp = json.load(open(os.path.join(root, "dataset_coco.json")))
    for split, names in {"train": {"train", "restval"}, "validation": {"val"}, "test": {"test"}}.items():
        good, bad = instances("coco", root, split)
        assert not bad
        expected = [(img, s) for img in kp["images"] if img["split"] in names for s in img["sentences"]]
        assert len(good) == len(expected)
        for inst, (img, sent) in zip(good, expected):
            assert inst.split == split and inst.inputs == ""
            assert inst.outputs == sent["raw"]
            assert inst.image_paths == [os.path.join(root, img["filepath"], img["filename"])]
            assert inst.meta["cocoid"] == img["cocoid"] and inst.source_id == f"{img['cocoid']}-{sent['sentid']}"


def test_vqa_matches_raw_files(world):
    root = world["vqa-v2"]
    qs = json.load(open(os.path.join(root, "v2_OpenEnded_mscoco_val2014_questions.json")))["questions"]
    anns = {a["question_id"]: a for a in json.load(open(os.path.join(root, "v2_mscoco_val2014_annotations.json")))["annotations"]}
    good, bad = instances("vqa-v2", root, "validation")
    assert not bad and len(good) == len(qs)
    for inst, q in zip(good, qs):
        a = anns[q["question_id"]]
        assert inst.inputs == q["question"] and inst.outputs == a["multiple_choice_answer"]
        assert inst.meta["answers"] == [x["answer"] for x in a["answers"]] and len(inst.meta["answers"]) == 10
        assert inst.image_paths == [os.path.join(root, "val2014", "COCO_val2014_%012d.jpg" % q["image_id"])]
        assert inst.source_id == str(q["question_id"])


def test_goi_matches_instances_file(world):
    root = world["coco-goi"]
    data = json.load(open(os.path.join(root, "annotations", "instances_train2014.json")))
    names = {c["id"]: c["name"] for c in data["categories"]}
    good, bad = instances("coco-goi", root, "train")
    assert not bad and len(good) == len(data["annotations"])
    letters = set()
    for inst, ann in zip(good, data["annotations"]):
        assert inst.boxes == [ann["bbox"]]
        gold = names[ann["category_id"]]
        assert inst.inputs.startswith("Options: (A) ")
        letter = inst.outputs[1]
        assert inst.outputs == f"({letter}) {gold}" and f"({letter}) {gold}" in inst.inputs
        assert set(inst.meta["options"]) == set(names.values())
        letters.add(letter)
    assert len(letters) > 1  # the gold is not always in the same place
    again, _ = instances("coco-goi", root, "train")
    assert [i.inputs for i in again] == [i.inputs for i in good]
    assert LETTERS.startswith("ABCD")


def test_flickr8k_cn_matches_caption_file(world):
    root = world["flickr8k-cn"]
    ids = open(os.path.join(root, "data", "flickr8kval.txt")).read().split()
    lines = open(os.path.join(root, "data", "flickr8kzhc.caption.txt"), encoding="utf-8").read().splitlines()
    expected = [l for l in lines if l.split("#")[0][:-4] in ids]
    good, bad = instances("flickr8k-cn", root, "validation")
    assert not bad and len(good) == len(expected) == 2 * len(ids)
    for inst, line in zip(good, expected):
        key, caption = line.split(" ", 1)
        assert inst.outputs == caption and inst.split == "validation"
        assert inst.image_paths == [os.path.join(root, "Flicker8k_Dataset", key.split("#")[0])]


def test_msrvtt_matches_qa_file(world):
    root = world["msrvtt-qa"]
    qa = json.load(open(os.path.join(root, "test_qa.json")))
    good, bad = instances("msrvtt-qa", root, "test")
    assert not bad and len(good) == len(qa)
    for inst, item in zip(good, qa):
        assert (inst.inputs, inst.outputs) == (item["question"], item["answer"])
        assert inst.video_path == os.path.join(root, "TestVideo", f"video{item['video_id']}.mp4")
        assert inst.image_paths == []


def test_missing_image_is_rejected(world):
    root = world["vqa-v2"]
    q = json.load(open(os.path.join(root, "v2_OpenEnded_mscoco_train2014_questions.json")))["questions"][0]
    os.remove(os.path.join(root, "train2014", "COCO_train2014_%012d.jpg" % q["image_id"]))
    good, bad = instances("vqa-v2", root, "train")
    assert bad and all("missing image file" in r.reason for r in bad)
    assert "questions[0]" in bad[0].source and bad[0].split == "train"

    shutil.rmtree(os.path.join(root, "..", "msrvtt-qa", "TrainValVideo"))
    good, bad = instances("msrvtt-qa", world["msrvtt-qa"], "train")
    assert not good and all("missing video file" in r.reason for r in bad)


def test_box_outside_image_and_missing_field_are_rejected(world):
    root = world["coco-goi"]
    path = os.path.join(root, "annotations", "instances_train2014.json")
    data = json.load(open(path))
    data["annotations"][0]["bbox"] = [50.0, 50.0, 30.0, 30.0]  # runs past the 64 px image
    del data["annotations"][1]["category_id"]
    json.dump(data, open(path, "w"))
    good, bad = instances("coco-goi", root, "train")
    assert len(bad) == 2 and len(good) == len(data["annotations"]) - 2
    assert "outside" in bad[0].reason and "annotations[0]" in bad[0].source
    assert "category_id" in bad[1].reason and "annotations[1]" in bad[1].source


def test_non_utf8_line_and_broken_json_are_rejected(world):
    root = world["flickr8k-cn"]
    cap = os.path.join(root, "data", "flickr8kzhc.caption.txt")
    train_id = open(os.path.join(root, "data", "flickr8ktrain.txt")).read().split()[0]
    with open(cap, "ab") as f:
        f.write(f"{train_id}.jpg#zhc#9 ".encode() + "坏的".encode("gbk") + b"\n")
    good, bad = instances("flickr8k-cn", root, "train")
    assert len(bad) == 1 and "UTF-8" in bad[0].reason and bad[0].source.endswith(f":{len(open(cap, 'rb').read().splitlines())}")
    assert len(good) == 8

    open(os.path.join(world["msrvtt-qa"], "val_qa.json"), "w").write("{not json")
    good, bad = instances("msrvtt-qa", world["msrvtt-qa"], "validation")
    assert not good and len(bad) == 1 and "not valid JSON" in bad[0].reason


# ---- streaming: big annotation files are read an entry at a time, never whole

from ying.data.tasks._common import json_items, json_members  # noqa: E402


def test_json_items_streams_and_names_each_kind_of_broken_file(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"info": {}, "data": [{"x": 1.5}, {"x": 2}], "map": {"k": [1]}}))
    assert list(json_items("t", "train", str(path), "data")) == [(f"{path}#data[0]", {"x": 1.5}),
                                                                  (f"{path}#data[1]", {"x": 2})]
    assert list(json_members("t", "train", str(path), "map")) == [("k", [1])]
    (bad,) = list(json_items("t", "train", str(path), "questions"))  # a file of another shape
    assert isinstance(bad, Reject) and bad.reason == f"{path} has no JSON array at 'questions'"
    (bad,) = list(json_items("t", "train", str(path), "map"))
    assert bad.reason == f"{path} has no JSON array at 'map'"
    (bad,) = list(json_items("t", "train", str(tmp_path / "nope.json"), "data"))
    assert "missing file" in bad.reason and bad.source == str(tmp_path / "nope.json")
    path.write_text(json.dumps({"data": []}))
    assert list(json_items("t", "train", str(path), "data")) == []  # empty, but the right shape
    # A file cut off mid-way (a broken download): the entries before the cut, then one reject.
    path.write_text('{"data": [{"x": 1}, {"x": 2}, {"x"')
    items = list(json_items("t", "train", str(path), "data"))
    assert [i[1] for i in items[:2]] == [{"x": 1}, {"x": 2}] and isinstance(items[2], Reject)
    assert items[2].reason.startswith(f"{path} is not valid JSON after 2 entries of data:") and "\n" not in items[2].reason


def _vqa_pair(root, n, shuffle_annotations=False):
    import random

    qs = [{"image_id": i // 3 + 1, "question": f"question {i}?", "question_id": i * 10 + 7} for i in range(n)]
    anns = [{"question_id": q["question_id"], "image_id": q["image_id"], "question_type": "what",
             "answer_type": "other", "multiple_choice_answer": f"answer {i}",
             "answers": [{"answer": f"answer {i}", "answer_confidence": "yes", "answer_id": j + 1} for j in range(10)]}
            for i, q in enumerate(qs)]
    if shuffle_annotations:
        random.Random(0).shuffle(anns)
    os.makedirs(os.path.join(root, "train2014"), exist_ok=True)
    with open(os.path.join(root, "v2_OpenEnded_mscoco_train2014_questions.json"), "w") as f:
        json.dump({"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {},
                   "data_subtype": "train2014", "questions": qs}, f)
    with open(os.path.join(root, "v2_mscoco_train2014_annotations.json"), "w") as f:
        json.dump({"info": {}, "license": {}, "data_subtype": "train2014", "annotations": anns, "data_type": "mscoco"}, f)
    for image_id in (1, 2):
        open(os.path.join(root, "train2014", "COCO_train2014_%012d.jpg" % image_id), "wb").write(b"jpeg")


def test_vqa_questions_and_annotations_pair_in_any_order(tmp_path):
    _vqa_pair(str(tmp_path / "a"), 30)
    _vqa_pair(str(tmp_path / "b"), 30, shuffle_annotations=True)
    pairs = lambda root: sorted((i.source_id, i.outputs, i.source.rsplit("#", 1)[1])  # noqa: E731
                                for i in get_task("vqa-v2").read_instances(root, "train") if isinstance(i, SourceInstance))
    assert pairs(str(tmp_path / "a")) == pairs(str(tmp_path / "b")) and len(pairs(str(tmp_path / "a"))) == 6
    # a question whose annotation is missing is rejected by name, whatever the order
    path = tmp_path / "b" / "v2_mscoco_train2014_annotations.json"
    data = json.load(open(path))
    data["annotations"] = [a for a in data["annotations"] if a["question_id"] != 17]
    json.dump(data, open(path, "w"))
    good, bad = instances("vqa-v2", str(tmp_path / "b"), "train")
    assert len(good) == 5 and [b.reason for b in bad if "annotation" in b.reason] == [
        f"no annotation for question_id 17 in {path}"]


def test_a_big_vqa_file_is_read_in_memory_far_below_its_parsed_size(tmp_path):
    """VQA v2's train annotations are ~330 MB: the adapter streams both files (peak traced memory a
    small fraction of what loading the annotation file alone takes)."""
    import gc
    import tracemalloc

    root = str(tmp_path / "big")
    _vqa_pair(root, 6_000)
    gc.collect()
    tracemalloc.start()
    n = sum(1 for _ in get_task("vqa-v2").read_instances(root, "train"))
    _, streamed = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    gc.collect()
    tracemalloc.start()
    with open(os.path.join(root, "v2_mscoco_train2014_annotations.json")) as f:
        whole = json.load(f)
    _, loaded = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del whole
    assert n == 6_000
    assert streamed * 10 < loaded, (streamed, loaded)
