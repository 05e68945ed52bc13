import hashlib
import json
import os
from urllib.parse import urlparse

from ying.data.instructions import load_pool
from ying.data.schema import Reject, SourceInstance
from ying.data.tasks import get_task

ROOT = os.path.join(os.path.dirname(__file__), "fixtures", "mmchat")
TASK = "mmchat"


def read(split):
    items = list(get_task(TASK).read_instances(ROOT, split))
    assert all(isinstance(i, (SourceInstance, Reject)) for i in items)
    return [i for i in items if isinstance(i, SourceInstance)], [i for i in items if isinstance(i, Reject)]


def crawler_name(url):
    ext = urlparse(url).path.split(".")
    return hashlib.sha256(url.encode()).hexdigest() + "." + (ext[-1] if len(ext) > 1 else "jpg")


def test_spec_and_pool():
    spec = get_task(TASK).SPEC
    assert (spec.category, spec.lang, spec.splits, spec.rephrase) == ("chinese", "zh", ("train", "validation", "test"), False)
    pool = load_pool(TASK)
    assert len(pool) == 10 and len(set(pool)) == 10


def test_records_match_release_lines():
    for split, s in (("train", "train"), ("validation", "dev"), ("test", "test")):
        dialogs = [json.loads(l) for l in open(os.path.join(ROOT, f"dialog_{s}.jsonl"), encoding="utf-8")]
        weibos = [json.loads(l) for l in open(os.path.join(ROOT, f"weibo_{s}.jsonl"), encoding="utf-8")]
        urls = [l.strip().split(";") for l in open(os.path.join(ROOT, f"img_url_{s}.jsonl"))]
        good, _ = read(split)
        by_line = {i.meta["line"]: i for i in good}
        assert by_line
        for n, (dialog, weibo, us) in enumerate(zip(dialogs, weibos, urls), start=1):
            paths = [os.path.join(ROOT, "image", crawler_name(u)) for u in us]
            if not all(os.path.exists(p) for p in paths):
                assert n not in by_line
                continue
            inst = by_line[n]
            assert inst.split == split and inst.source_id == f"{s}-{n}"
            assert inst.outputs == dialog[-1]
            assert inst.inputs == "\n".join(f"{'AB'[k % 2]}: {t}" for k, t in enumerate(dialog[:-1]))
            assert inst.image_paths == paths  # every image, in order
            assert inst.meta["dialog"] == dialog and inst.meta["weibo_content"] == weibo and inst.meta["image_urls"] == us
    good, _ = read("train")
    assert len(good[0].image_paths) == 2 and good[2].inputs == ""  # a one-turn dialogue has no history


def test_missing_image_is_rejected():
    good, bad = read("train")
    assert len(good) == 3 and len(bad) == 1
    assert bad[0].source.endswith("dialog_train.jsonl:4") and "missing image file image/" in bad[0].reason
    assert "yunnan9.jpg" in bad[0].reason


def test_broken_line_and_misaligned_files(tmp_path):
    import shutil

    root = tmp_path / "mmchat"
    shutil.copytree(ROOT, root)
    with open(root / "dialog_dev.jsonl", "a", encoding="utf-8") as f:
        f.write("[not json\n")
    with open(root / "weibo_dev.jsonl", "a", encoding="utf-8") as f:
        f.write('"分享图片"\n')
    with open(root / "img_url_dev.jsonl", "a") as f:
        f.write("https://wx3.sinaimg.cn/large/cat001.jpg\n")
    items = list(get_task(TASK).read_instances(str(root), "validation"))
    bad = [i for i in items if isinstance(i, Reject)]
    assert len(items) == 2 and len(bad) == 1 and "not JSON" in bad[0].reason and bad[0].source.endswith("dialog_dev.jsonl:2")
    with open(root / "weibo_test.jsonl", "a", encoding="utf-8") as f:
        f.write('"分享图片"\n')
    items = list(get_task(TASK).read_instances(str(root), "test"))
    assert len(items) == 1 and isinstance(items[0], Reject) and "not line-aligned" in items[0].reason
