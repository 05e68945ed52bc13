import hashlib
import io
import json
import os

import av
import pytest
from PIL import Image

from ying.config import MiniWorldConfig
from ying.data.miniworld import generate_miniworld, lexicon_corpus
from ying.data.miniworld.scenes import BACKGROUNDS, COLORS

TASKS = ["coco", "vqa-v2", "coco-goi", "flickr8k-cn", "msrvtt-qa"]


def small_cfg(n: int = 12) -> MiniWorldConfig:
    return MiniWorldConfig(
        image_size=64,
        n_images={"coco/train": n, "coco/validation": 3, "coco/test": 3, "vqa-v2/train": n,
                  "vqa-v2/validation": 4, "coco-goi/train": n, "coco-goi/validation": 3,
                  "flickr8k-cn/train": 4, "flickr8k-cn/validation": 2, "flickr8k-cn/test": 2},
        n_videos={"msrvtt-qa/train": 3, "msrvtt-qa/validation": 2, "msrvtt-qa/test": 2},
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("mw")
    return generate_miniworld(str(out), small_cfg(), seed=3, tasks=TASKS)


def tree_digest(root: str) -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def close(rgb, ref, tol=40):
    return all(abs(a - b) <= tol for a, b in zip(rgb, ref))


def test_deterministic_for_a_seed(world, tmp_path):
    again = generate_miniworld(str(tmp_path / "a"), small_cfg(), seed=3, tasks=TASKS)
    other = generate_miniworld(str(tmp_path / "b"), small_cfg(), seed=4, tasks=["vqa-v2"])
    for task in TASKS:
        assert tree_digest(world[task]) == tree_digest(again[task]), task
    assert tree_digest(world["vqa-v2"]) != tree_digest(other["vqa-v2"])


def test_real_file_layouts(world):
    kp = json.load(open(os.path.join(world["coco"], "dataset_coco.json")))
    assert kp["dataset"] == "coco"
    img = kp["images"][0]
    assert set(img) >= {"filepath", "filename", "imgid", "split", "sentences", "sentids", "cocoid"}
    assert {"tokens", "raw", "imgid", "sentid"} <= set(img["sentences"][0])
    assert {i["split"] for i in kp["images"]} == {"train", "restval", "val", "test"}
    assert os.path.exists(os.path.join(world["coco"], img["filepath"], img["filename"]))

    root = world["vqa-v2"]
    q = json.load(open(os.path.join(root, "v2_OpenEnded_mscoco_train2014_questions.json")))
    a = json.load(open(os.path.join(root, "v2_mscoco_train2014_annotations.json")))
    assert set(q["questions"][0]) == {"image_id", "question", "question_id"}
    ann = a["annotations"][0]
    assert set(ann) >= {"question_id", "image_id", "answers", "multiple_choice_answer", "answer_type", "question_type"}
    assert len(ann["answers"]) == 10 and set(ann["answers"][0]) == {"answer", "answer_confidence", "answer_id"}
    assert os.path.exists(os.path.join(root, "train2014", "COCO_train2014_%012d.jpg" % q["questions"][0]["image_id"]))
    assert os.path.exists(os.path.join(root, "v2_OpenEnded_mscoco_val2014_questions.json"))

    inst = json.load(open(os.path.join(world["coco-goi"], "annotations", "instances_train2014.json")))
    assert {"images", "annotations", "categories"} <= set(inst)
    assert len(inst["annotations"][0]["bbox"]) == 4 and "category_id" in inst["annotations"][0]

    data = os.path.join(world["flickr8k-cn"], "data")
    line = open(os.path.join(data, "flickr8kzhc.caption.txt"), encoding="utf-8").readline().strip()
    key, caption = line.split(" ", 1)
    image, kind, n = key.split("#")
    assert image.endswith(".jpg") and kind == "zhc" and n == "0"
    assert "的背景上" in caption and caption.isprintable()
    train_ids = open(os.path.join(data, "flickr8ktrain.txt")).read().split()
    assert len(train_ids) == 4 and os.path.exists(os.path.join(world["flickr8k-cn"], "Flicker8k_Dataset", train_ids[0] + ".jpg"))

    qa = json.load(open(os.path.join(world["msrvtt-qa"], "train_qa.json")))
    assert set(qa[0]) == {"question", "answer", "video_id", "id"}
    for name in ("val_qa.json", "test_qa.json"):
        assert os.path.exists(os.path.join(world["msrvtt-qa"], name))
    with av.open(os.path.join(world["msrvtt-qa"], "videos", f"video{qa[0]['video_id']}.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 16


def test_images_are_jpeg_of_configured_size(world):
    path = os.path.join(world["coco-goi"], "train2014")
    for name in os.listdir(path)[:5]:
        with Image.open(os.path.join(path, name)) as im:
            assert im.format == "JPEG" and im.size == (64, 64)


def test_vqa_answers_true_of_the_picture(world):
    root = world["vqa-v2"]
    scenes = json.load(open(os.path.join(root, "_miniworld", "scenes.json")))
    qs = {q["question_id"]: q for q in json.load(open(os.path.join(root, "v2_OpenEnded_mscoco_train2014_questions.json")))["questions"]}
    anns = json.load(open(os.path.join(root, "v2_mscoco_train2014_annotations.json")))["annotations"]
    checked = 0
    for ann in anns:
        q = qs[ann["question_id"]]["question"]
        rel = "train2014/COCO_train2014_%012d.jpg" % ann["image_id"]
        scene = scenes[rel]
        img = Image.open(os.path.join(root, rel)).convert("RGB")
        answer = ann["multiple_choice_answer"]
        # the background colour at a corner no shape covers, or at least the named background exists
        if q.startswith("What color is the "):
            kind = q[len("What color is the "):-1]
            (shape,) = [s for s in scene["shapes"] if s["kind"] == kind]
            x, y, w, h = shape["box"]
            assert close(img.getpixel((x + w // 2, y + h // 2)), COLORS[answer]), (q, answer)
            checked += 1
        elif q.startswith("How many"):
            assert int(answer) == len(scene["shapes"])
        elif q.startswith("What shape is the "):
            color = q[len("What shape is the "):-len(" object?")]
            (shape,) = [s for s in scene["shapes"] if s["color"] == color]
            assert shape["kind"] == answer
            x, y, w, h = shape["box"]
            assert close(img.getpixel((x + w // 2, y + h // 2)), COLORS[color])
        elif q.startswith("Is there a "):
            color, kind = q[len("Is there a "):-1].split()
            present = any(s["color"] == color and s["kind"] == kind for s in scene["shapes"])
            assert answer == ("yes" if present else "no")
        assert all(a["answer"] == answer for a in ann["answers"])
    assert checked > 0


def test_goi_box_encloses_its_shape(world):
    root = world["coco-goi"]
    inst = json.load(open(os.path.join(root, "annotations", "instances_train2014.json")))
    scenes = json.load(open(os.path.join(root, "_miniworld", "scenes.json")))
    names = {c["id"]: c["name"] for c in inst["categories"]}
    files = {i["id"]: i["file_name"] for i in inst["images"]}
    for ann in inst["annotations"]:
        scene = scenes["train2014/" + files[ann["image_id"]]]
        match = [s for s in scene["shapes"] if s["box"] == [int(v) for v in ann["bbox"]]]
        assert match and match[0]["kind"] == names[ann["category_id"]]
        img = Image.open(os.path.join(root, "train2014", files[ann["image_id"]])).convert("RGB")
        x, y, w, h = ann["bbox"]
        assert not close(img.getpixel((int(x + w // 2), int(y + h // 2))), BACKGROUNDS[scene["background"]], tol=20)


def test_video_answers_true(world):
    root = world["msrvtt-qa"]
    scenes = json.load(open(os.path.join(root, "_miniworld", "scenes.json")))
    qa = json.load(open(os.path.join(root, "train_qa.json")))
    for item in qa:
        clip = scenes[f"videos/video{item['video_id']}.mp4"]
        if item["question"].startswith("which way"):
            assert item["answer"] == clip["direction"]
            with av.open(os.path.join(root, "videos", f"video{item['video_id']}.mp4")) as c:
                frames = [f.to_image().convert("RGB") for f in c.decode(video=0)]
            # where is the shape's colour, first vs last frame
            def centroid(im):
                pts = [(x, y) for x in range(64) for y in range(64) if close(im.getpixel((x, y)), COLORS[clip["color"]], 50)]
                return sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)
            (x0, y0), (x1, y1) = centroid(frames[0]), centroid(frames[-1])
            moved = {"left": x0 - x1, "right": x1 - x0, "up": y0 - y1, "down": y1 - y0}[clip["direction"]]
            assert moved > 20
        elif item["question"].startswith("what color"):
            assert item["answer"] == clip["color"]
        else:
            assert item["answer"] == clip["kind"]


def test_answer_distribution_has_no_dominant_answer(tmp_path):
    cfg = MiniWorldConfig(n_images={"vqa-v2/train": 300})
    root = generate_miniworld(str(tmp_path), cfg, seed=0, tasks=["vqa-v2"])["vqa-v2"]
    anns = json.load(open(os.path.join(root, "v2_mscoco_train2014_annotations.json")))["annotations"]
    from collections import Counter

    top = Counter(a["multiple_choice_answer"] for a in anns).most_common(1)[0][1]
    assert len(anns) == 900 and top / len(anns) <= 0.2


def test_lexicon_covers_generated_text(world):
    lex = set(" ".join(lexicon_corpus()).replace("?", " ").replace(",", " ").replace(":", " ").split())
    zh = "".join(lexicon_corpus())
    kp = json.load(open(os.path.join(world["coco"], "dataset_coco.json")))
    for img in kp["images"]:
        for s in img["sentences"]:
            assert set(s["tokens"]) <= lex
    for line in open(os.path.join(world["flickr8k-cn"], "data", "flickr8kzhc.caption.txt"), encoding="utf-8"):
        assert set(line.split(" ", 1)[1].strip()) <= set(zh)


def test_unknown_task_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="knows"):
        generate_miniworld(str(tmp_path), small_cfg(), seed=0, tasks=["imagenet"])
