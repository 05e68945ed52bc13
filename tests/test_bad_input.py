"""Bad input never kills a run: seven kinds of broken source data, in one real build of a tiny
mini-world, are each set aside with a reason that names what is wrong, and the counts reconcile."""

import io
import json
import os

import pytest
from PIL import Image

from ying.config import MiniWorldConfig, load_config
from ying.data.build import build_unified
from ying.data.records import read_records, read_rejects
from ying.data.miniworld import generate_miniworld
from ying.data.qc import check_records

TASKS = ["coco", "vqa-v2", "coco-goi", "flickr8k-cn"]


def small_world(root: str) -> dict[str, str]:
    cfg = MiniWorldConfig(n_images={"coco/train": 6, "coco/validation": 2, "coco/test": 2, "vqa-v2/train": 3,
                                    "vqa-v2/validation": 2, "coco-goi/train": 3, "coco-goi/validation": 2,
                                    "flickr8k-cn/train": 3, "flickr8k-cn/validation": 2, "flickr8k-cn/test": 2})
    return generate_miniworld(root, cfg, seed=0, tasks=TASKS)


def load(path):
    return json.load(open(path, encoding="utf-8"))


def dump(path, obj):
    json.dump(obj, open(path, "w", encoding="utf-8"))


@pytest.fixture(scope="module")
def broken_build(tmp_path_factory, ray_cluster):
    base = tmp_path_factory.mktemp("bad")
    roots = small_world(str(base / "sources"))
    coco = roots["coco"]
    train = [i for i in load(os.path.join(coco, "dataset_coco.json"))["images"] if i["split"] == "train"]
    path = [os.path.join(coco, i["filepath"], i["filename"]) for i in train]
    # 1. a truncated JPEG: the first half of a real one
    data = open(path[0], "rb").read()
    open(path[0], "wb").write(data[: len(data) // 2])
    # 2. an empty file
    open(path[1], "wb").close()
    # 3. a file that is not an image
    open(path[2], "wb").write(b"<html><body>404 Not Found</body></html>\n")
    # 4. a decompression bomb: a few kB of PNG that would decode to 81 million pixels
    buf = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buf, "PNG")
    open(path[3], "wb").write(buf.getvalue())
    # 5. a box outside the image (COCO-GOI draws it as the visual prompt)
    goi = os.path.join(roots["coco-goi"], "annotations", "instances_train2014.json")
    inst = load(goi)
    inst["annotations"][0]["bbox"] = [50.0, 50.0, 40.0, 40.0]  # the images are 64 x 64
    dump(goi, inst)
    # 6. a missing field: a VQA v2 question without its text
    vq = os.path.join(roots["vqa-v2"], "v2_OpenEnded_mscoco_train2014_questions.json")
    qs = load(vq)
    del qs["questions"][0]["question"]
    dump(vq, qs)
    # 7. non-UTF-8 text: one Flickr8k-CN caption in GBK, as some mirrors ship it
    cap = os.path.join(roots["flickr8k-cn"], "data", "flickr8kzhc.caption.txt")
    lines = open(cap, "rb").read().split(b"\n")
    key, caption = lines[0].split(b" ", 1)
    lines[0] = key + b" " + caption.decode("utf-8").encode("gbk")
    open(cap, "wb").write(b"\n".join(lines))

    cfg = load_config("tiny", overrides=[f"data.tasks=[{','.join(TASKS)}]", "data.held_out=[]"])
    out = str(base / "unified")
    stats = build_unified(cfg, roots, out)
    qc = check_records(out, str(base / "qc"))
    return {"roots": roots, "paths": path, "out": out, "stats": stats, "qc": qc, "rejects": read_rejects(out),
            "goi": goi, "vq": vq, "cap": cap}


def only(rejects, task, needle):
    hits = [r for r in rejects if r["task"] == task and needle in (r["source"] + " " + r["reason"])]
    assert hits, f"no {task} reject mentions {needle!r}: {[r['reason'] for r in rejects if r['task'] == task]}"
    return hits


def test_each_kind_of_bad_input_is_rejected_with_a_clear_reason(broken_build):
    b, rejects = broken_build, broken_build["rejects"]
    truncated, empty, not_image, bomb = b["paths"][:4]
    # Each COCO image carries two captions: both instances are set aside, each naming the file.
    for path, words in ((truncated, "image file is truncated"), (empty, "empty image file"),
                        (not_image, "image does not decode: not an image format Pillow knows (first bytes b'<html><body>404 ')"), (bomb, "decompression bomb")):
        hits = only(rejects, "coco", os.path.basename(path))
        assert len(hits) == 2 and all(words in r["reason"] and path in r["reason"] for r in hits), hits
    (box,) = only(rejects, "coco-goi", "outside")
    assert "box [50.0, 50.0, 40.0, 40.0] outside the 64x64 image" in box["reason"]
    assert box["source"] == f"{b['goi']}#annotations[0]"
    (missing,) = only(rejects, "vqa-v2", "missing field")
    assert missing["reason"] == "missing field 'question'" and missing["source"] == f"{b['vq']}#questions[0]"
    (text,) = only(rejects, "flickr8k-cn", "not UTF-8")
    assert text["reason"].startswith("line is not UTF-8") and text["source"] == f"{b['cap']}:1"
    assert len(rejects) == 4 * 2 + 3


def test_the_run_completes_and_counts_reconcile(broken_build):
    b = broken_build
    stats, rejects, qc = b["stats"], b["rejects"], b["qc"]
    assert set(stats) == set(TASKS)
    for task, splits in stats.items():
        for split, c in splits.items():
            assert c["read"] == c["written"] + c["rejected"], (task, split, c)
            assert c["rejected"] == sum(1 for r in rejects if r["task"] == task and r["split"] == split)
            assert c["written"] == len(read_records(b["out"], split, [task])), (task, split)
    assert stats["coco"]["train"]["rejected"] == 8 and stats["coco"]["train"]["written"] == 4
    assert stats["coco-goi"]["train"]["rejected"] == 1 and stats["vqa-v2"]["train"]["rejected"] == 1
    assert stats["flickr8k-cn"]["train"]["rejected"] + stats["flickr8k-cn"]["validation"]["rejected"] \
        + stats["flickr8k-cn"]["test"]["rejected"] == 1
    # QC then sees only good records: everything the build wrote passes
    assert qc["checked"] == sum(c["written"] for s in stats.values() for c in s.values())
    assert qc["rejected"] == 0 and qc["passed"] == qc["checked"]
