import hashlib
import json
import os

import av
import pytest
from PIL import Image

from ying.config import MiniWorldConfig
from ying.data.miniworld import generate_miniworld, lexicon_corpus
from ying.data.miniworld.scenes import BACKGROUNDS, COLORS

TASKS = ["coco", "vqa-v2", "coco-goi", "flickr8k-cn", "msrvtt-qa", "okvqa", "clevr", "visual-dialog", "llava"]


def small_cfg(n: int = 12) -> MiniWorldConfig:
    return MiniWorldConfig(
        image_size=64,
        n_images={"coco/train": n, "coco/validation": 3, "coco/test": 3, "vqa-v2/train": n,
                  "vqa-v2/validation": 4, "coco-goi/train": n, "coco-goi/validation": 3,
                  "flickr8k-cn/train": 4, "flickr8k-cn/validation": 2, "flickr8k-cn/test": 2,
                  "okvqa/train": n, "okvqa/validation": 4, "clevr/train": n, "clevr/validation": 3,
                  "visual-dialog/train": 20, "visual-dialog/validation": 3, "visual-dialog/test": 3,
                  "llava/train": 8},
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
    numbers = [ln.split(" ", 1)[0].rsplit("#", 1)[1] for ln in open(os.path.join(data, "flickr8kzhc.caption.txt"), encoding="utf-8")]
    assert numbers == sorted(numbers)  # as the release: every image's caption 0, then every caption 1
    assert list(json.load(open(os.path.join(world["coco-goi"], "annotations", "instances_train2014.json")))) == [
        "info", "images", "licenses", "annotations", "categories"]  # COCO's key order: categories last
    train_ids = open(os.path.join(data, "flickr8ktrain.txt")).read().split()
    assert len(train_ids) == 4 and os.path.exists(os.path.join(world["flickr8k-cn"], "Flicker8k_Dataset", train_ids[0] + ".jpg"))

    qa = json.load(open(os.path.join(world["msrvtt-qa"], "train_qa.json")))
    assert set(qa[0]) == {"question", "answer", "video_id", "id", "category_id"}
    for name in ("val_qa.json", "test_qa.json"):
        assert os.path.exists(os.path.join(world["msrvtt-qa"], name))
    # MSR-VTT's own folders: train and val clips in TrainValVideo/, test clips in TestVideo/
    test_qa = json.load(open(os.path.join(world["msrvtt-qa"], "test_qa.json")))
    assert os.path.exists(os.path.join(world["msrvtt-qa"], "TestVideo", f"video{test_qa[0]['video_id']}.mp4"))
    with av.open(os.path.join(world["msrvtt-qa"], "TrainValVideo", f"video{qa[0]['video_id']}.mp4")) as c:
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
        clip = scenes[f"TrainValVideo/video{item['video_id']}.mp4"]
        if item["question"].startswith("which way"):
            assert item["answer"] == clip["direction"]
            with av.open(os.path.join(root, "TrainValVideo", f"video{item['video_id']}.mp4")) as c:
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


# --- okvqa, clevr, visual-dialog: read by the real adapters, answers true of the picture -------------

def adapter_output(root: str, task: str):
    from ying.data.schema import Reject
    from ying.data.tasks import get_task

    adapter = get_task(task)
    out = {}
    for split in adapter.SPEC.splits:
        items = list(adapter.read_instances(root, split))
        assert not [i for i in items if isinstance(i, Reject)], (task, split, items)
        out[split] = items
    return out


def shape_at_box_is(img, shape, color):
    x, y, w, h = shape["box"]
    return close(img.getpixel((x + w // 2, y + h // 2)), COLORS[color])


def test_every_category_has_a_miniworld_task_in_the_tiny_preset():
    from ying.config import load_config
    from ying.data.miniworld import MINIWORLD_TASKS
    from ying.data.schema import CATEGORIES
    from ying.data.tasks import get_task

    cfg = load_config("tiny")
    assert set(cfg.data.tasks) <= set(MINIWORLD_TASKS)
    assert {get_task(t).SPEC.category for t in cfg.data.tasks} == set(CATEGORIES)
    for task in cfg.data.tasks:  # every task gets a train split, and an evaluation split where its release has one
        sizes = cfg.miniworld.n_videos if task == "msrvtt-qa" else cfg.miniworld.n_images
        assert sizes.get(f"{task}/train", 0) > 0, task
        if set(get_task(task).SPEC.splits) & {"validation", "test"}:  # not llava: LLaVA-Instruct-150K is train only
            assert sizes.get(f"{task}/validation", 0) + sizes.get(f"{task}/test", 0) > 0, task
    # small next to VQA v2, so the new tasks don't crowd it out of Stage II
    for task in ("okvqa", "clevr", "visual-dialog"):
        assert cfg.miniworld.n_images[f"{task}/train"] <= 150


def test_okvqa_adapter_reads_it_and_answers_need_knowledge_and_are_true(world):
    from ying.data.miniworld.scenes import FRUITS_BY_COLOR

    root = world["okvqa"]
    scenes = json.load(open(os.path.join(root, "_miniworld", "scenes.json")))
    out = adapter_output(root, "okvqa")
    assert len(out["train"]) == 12 and len(out["validation"]) == 4
    kinds = set()
    for split, sub in (("train", "train2014"), ("validation", "val2014")):
        for inst in out[split]:
            rel = f"{sub}/COCO_{sub}_{inst.meta['image_id']:012d}.jpg"
            scene, img = scenes[rel], Image.open(os.path.join(root, rel)).convert("RGB")
            q = inst.inputs
            if q.startswith("What fruit is the same color as the "):
                kind = q[len("What fruit is the same color as the "):-1]
                (shape,) = [s for s in scene["shapes"] if s["kind"] == kind]
                assert shape_at_box_is(img, shape, shape["color"])
                assert inst.outputs == FRUITS_BY_COLOR[shape["color"]][0]
                assert set(inst.meta["answers"]) <= set(FRUITS_BY_COLOR[shape["color"]])
                kinds.add("fruit")
            else:
                color = q[len("How many sides does the "):-len(" shape have?")]
                (shape,) = [s for s in scene["shapes"] if s["color"] == color]
                assert inst.outputs == {"triangle": "3", "square": "4"}[shape["kind"]]
                kinds.add("sides")
    assert kinds == {"fruit", "sides"}


def test_clevr_adapter_reads_it_and_spatial_answers_are_true(world):
    root = world["clevr"]
    scenes = json.load(open(os.path.join(root, "_miniworld", "scenes.json")))
    out = adapter_output(root, "clevr")
    assert len(out["train"]) == 24 and len(out["validation"]) == 6
    families = set()
    for split, sub in (("train", "train"), ("validation", "val")):
        for inst in out[split]:
            rel = f"images/{sub}/{inst.meta['image_filename']}"
            scene = scenes[rel]
            with Image.open(os.path.join(root, rel)) as im:
                assert im.format == "PNG"
                img = im.convert("RGB")
            by_name = {f"{s['color']} {s['kind']}": s for s in scene["shapes"]}
            for s in scene["shapes"]:
                assert shape_at_box_is(img, s, s["color"])
            # Where each shape really is, from its pixels' centre (not from the file's boxes).
            centre = {name: (s["box"][0] + s["box"][2] / 2, s["box"][1] + s["box"][3] / 2) for name, s in by_name.items()}
            q, a = inst.inputs, inst.outputs
            families.add(inst.meta["question_family_index"])
            if q.startswith("Is the "):
                body = q[len("Is the "):-1]
                for word in ("left of", "right of", "above", "below"):
                    if f" {word} the " in body:
                        first, second = body.split(f" {word} the ")
                        break
                (ax, ay), (bx, by) = centre[first], centre[second]
                truth = {"left of": ax < bx, "right of": ax > bx, "above": ay < by, "below": ay > by}[word]
                assert a == ("yes" if truth else "no"), (q, a)
            else:
                body = q[len("How many shapes are "):-1]
                for word in ("left of", "right of", "above", "below"):
                    if body.startswith(word + " the "):
                        ref = body[len(word + " the "):]
                        break
                rx, ry = centre[ref]
                n = sum({"left of": x < rx, "right of": x > rx, "above": y < ry, "below": y > ry}[word]
                        for name, (x, y) in centre.items() if name != ref)
                assert a == str(n), (q, a)
    assert families == {0, 1, 2}


def test_visual_dialog_adapter_reads_it_and_answers_are_true(world):
    root = world["visual-dialog"]
    scenes = json.load(open(os.path.join(root, "_miniworld", "scenes.json")))
    out = adapter_output(root, "visual-dialog")
    assert len(out["train"]) == 40 and len(out["validation"]) == 6
    assert len(out["test"]) == 3  # the last test round is the hidden one
    folders = {"validation": "VisualDialog_val2018", "test": "VisualDialog_test2018"}
    for split, items in out.items():
        for inst in items:
            image_id = inst.meta["image_id"]
            if split == "train":
                sub = "val2014" if image_id >= 900_001 else "train2014"
                rel = f"{sub}/COCO_{sub}_{image_id:012d}.jpg"
            else:
                rel = f"{folders[split]}/{folders[split]}_{image_id:012d}.jpg"
            scene = scenes[rel]
            img = Image.open(os.path.join(root, rel)).convert("RGB")
            caption = inst.inputs.splitlines()[0]
            n = len(scene["shapes"])
            assert caption.startswith("Caption: ") and caption.endswith(f"on a {scene['background']} background")
            assert caption.split()[1] == {1: "one", 2: "two", 3: "three"}[n]
            question = inst.inputs.splitlines()[-1][len("Question: "):]
            kinds = {s["kind"]: s for s in scene["shapes"]}
            colors = {s["color"]: s for s in scene["shapes"]}
            if question.startswith("what color is the "):
                shape = kinds[question[len("what color is the "):]]
                assert inst.outputs == f"it is {shape['color']}" and shape_at_box_is(img, shape, shape["color"])
            elif question.startswith("what shape is the "):
                assert inst.outputs == f"a {colors[question[len('what shape is the '):-len(' one')]]['kind']}"
            else:
                asked = question[len("is there a "):]
                assert inst.outputs == (f"yes, a {kinds[asked]['color']} one" if asked in kinds else "no")


def test_shared_coco_val_image_is_the_same_picture_in_both_datasets(world):
    """One visual-dialog training dialog in ten is about an OK-VQA validation image (id and bytes)."""
    vd = world["visual-dialog"]
    shared = sorted(os.listdir(os.path.join(vd, "val2014")))
    assert shared == ["COCO_val2014_000000900001.jpg", "COCO_val2014_000000900002.jpg"]  # 20 dialogs / 10
    for name in shared:
        a = open(os.path.join(vd, "val2014", name), "rb").read()
        b = open(os.path.join(world["okvqa"], "val2014", name), "rb").read()
        assert a == b
    train_ids = {i.meta["image_id"] for i in adapter_output(vd, "visual-dialog")["train"]}
    assert {900_001, 900_002} <= train_ids
