import os
import shutil

import numpy as np
import pytest
from PIL import Image

from ying.data.instructions import load_pool
from ying.data.schema import Reject, SourceInstance
from ying.data.tasks import get_task

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "shapes")
TASK = "shapes"


@pytest.fixture()
def root(tmp_path):
    dst = tmp_path / "shapes"
    shutil.copytree(FIXTURE, dst)  # the adapter writes its PNG cache under the root
    return str(dst)


def run(root, split):
    items = list(get_task(TASK).read_instances(root, split))
    assert all(isinstance(i, (SourceInstance, Reject)) for i in items)
    return [i for i in items if isinstance(i, SourceInstance)], [i for i in items if isinstance(i, Reject)]


def raw(root, prefix):
    read = lambda ext: open(os.path.join(root, f"{prefix}.{ext}"), encoding="utf-8").read().splitlines()
    return read("query_str.txt"), read("query"), read("output"), np.load(os.path.join(root, f"{prefix}.input.npy"))


def test_spec_and_pool():
    spec = get_task(TASK).SPEC
    assert (spec.category, spec.lang, spec.splits, spec.rephrase) == ("vqa", "en", ("train", "validation", "test"), True)
    pool = load_pool(TASK)
    assert len(pool) == 10 == len(set(pool))


def test_train_maps_lines_and_array_rows(root):
    qs, forms, outs, images = raw(root, "train.large")
    good, bad = run(root, "train")
    assert not bad and len(good) == len(qs) == 3
    for i, (inst, q, lf, a) in enumerate(zip(good, qs, forms, outs)):
        assert inst.split == "train" and inst.source_id == f"train.large-{i}"
        assert (inst.inputs, inst.outputs) == (q, a)
        assert inst.meta["original_answer"] == a and inst.meta["logical_form"] == lf and inst.meta["index"] == i
        assert inst.image_paths == [os.path.join(root, "_ying_png", "train", f"{i}.png")]
        assert inst.source.endswith(f"train.large.query_str.txt:{i + 1}")
        with Image.open(inst.image_paths[0]) as im:
            assert im.size == (30, 30) and np.array_equal(np.asarray(im.convert("RGB")), images[i])
        assert inst.boxes is None and inst.video_path is None


def test_cache_is_reused_not_rewritten(root):
    good, _ = run(root, "train")
    path = good[0].image_paths[0]
    before = os.stat(path).st_mtime_ns
    again, _ = run(root, "train")
    assert [i.image_paths for i in again] == [i.image_paths for i in good]
    assert os.stat(path).st_mtime_ns == before


def test_float_images_are_scaled(root):
    qs, _, _, images = raw(root, "train.large")
    np.save(os.path.join(root, "train.large.input.npy"), images.astype(np.float64) / 255.0)
    good, bad = run(root, "train")
    assert not bad
    with Image.open(good[1].image_paths[0]) as im:
        assert np.abs(np.asarray(im).astype(int) - images[1].astype(int)).max() <= 1


def test_missing_image_row_and_empty_answer_are_rejected(root):
    qs, _, outs, images = raw(root, "val")
    good, bad = run(root, "validation")
    assert len(images) == 2 and len(good) == 2 and len(bad) == 1
    assert "no image at index 2" in bad[0].reason and "val.input.npy" in bad[0].reason
    assert bad[0].source.endswith("val.query_str.txt:3") and bad[0].split == "validation"

    good, bad = run(root, "test")
    assert [g.inputs for g in good] == [qs_ for qs_, a in zip(raw(root, "test")[0], raw(root, "test")[2]) if a]
    assert len(bad) == 1 and "no answer" in bad[0].reason and bad[0].source.endswith("test.query_str.txt:2")


def test_broken_array_is_one_reject(root):
    open(os.path.join(root, "val.input.npy"), "wb").write(b"not an array")
    good, bad = run(root, "validation")
    assert not good and len(bad) == 1 and "unusable image array" in bad[0].reason
    assert bad[0].source.endswith("val.input.npy")
    shutil.rmtree(os.path.join(root, "_ying_png"), ignore_errors=True)
    os.remove(os.path.join(root, "test.output"))
    good, bad = run(root, "test")
    assert not good and len(bad) == 1 and "missing file" in bad[0].reason
