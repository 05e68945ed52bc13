"""Training: a real 2-worker DeepSpeed run inside Ray Train, and what it changes."""

import io
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ying.config import load_config
from ying.data.schema import RECORD_SCHEMA
from ying.model.checkpoint import save_checkpoint
from ying.model.tokenizer import build_tokenizer
from ying.model.vlm import build_model
from ying.train.data import micro_batches, stream_records
from ying.train.loop import lr_lambda
from ying.train.stages import fit, stage_plan, stage_tasks

COLORS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}


def _records(split: str, n: int) -> list[dict]:
    rows = []
    for i in range(n):
        name, rgb = list(COLORS.items())[i % 3]
        buf = io.BytesIO()
        Image.new("RGB", (32, 32), rgb).save(buf, "PNG")
        task = "coco" if i % 2 else "vqa-v2"
        rows.append({"id": f"{task}-{split}-{i}", "task": task, "category": "captioning" if task == "coco" else "vqa",
                     "lang": "en", "split": split, "images": [buf.getvalue()], "instruction": "Say the colour.",
                     "inputs": "" if task == "coco" else "What color is it?", "outputs": name, "meta": "{}"})
    return rows


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("records")
    for split, n in (("train", 24), ("validation", 8)):
        (root / "records" / split).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(_records(split, n), schema=RECORD_SCHEMA),
                       root / "records" / split / "part-0.parquet")
    return str(root)


def test_workers_stream_disjoint_shares_that_cover_the_split(data_dir):
    def ids(rank, world, epoch, buffer_size=4):
        return [r["id"] for r in stream_records(data_dir, "train", ["coco", "vqa-v2"], rank, world, 0, epoch, buffer_size)]

    a, b = ids(0, 2, 0), ids(1, 2, 0)
    assert not set(a) & set(b) and len(a) + len(b) == 24 and len(set(a + b)) == 24
    assert ids(0, 2, 0) == a  # deterministic
    assert ids(0, 2, 1) != a  # a new epoch, a new order
    coco_only = [r["task"] for r in stream_records(data_dir, "train", ["coco"], 0, 1, 0, 0, 4)]
    assert coco_only == ["coco"] * 12


def test_micro_batches_resume_exactly_and_refuse_too_little_data(data_dir):
    full = micro_batches(data_dir, ["coco", "vqa-v2"], 0, 2, 7, 4, 8)
    first_five = [[r["id"] for r in next(full)] for _ in range(5)]  # crosses an epoch (3 per epoch)
    resumed = micro_batches(data_dir, ["coco", "vqa-v2"], 0, 2, 7, 4, 8, start_step=3)
    assert [[r["id"] for r in next(resumed)] for _ in range(2)] == first_five[3:]
    with pytest.raises(ValueError, match="fewer than 64 training records"):
        next(micro_batches(data_dir, ["coco"], 0, 1, 0, 64, 8))


def test_schedule_warms_up_linearly_then_decays_by_cosine():
    assert lr_lambda(0, 10, 100) == pytest.approx(0.1) and lr_lambda(9, 10, 100) == pytest.approx(1.0)
    assert lr_lambda(55, 10, 100) == pytest.approx(0.5)
    assert lr_lambda(100, 10, 100) == pytest.approx(0.0, abs=1e-12)


def test_stage_tasks_follow_the_held_out_policy():
    cfg = load_config("tiny")
    assert stage_tasks(cfg, "stage1") == ["coco"]
    # no Chinese, no video (Figure 8)
    assert stage_tasks(cfg, "stage2") == ["coco", "vqa-v2", "coco-goi", "okvqa", "clevr", "visual-dialog"]
    cfg = load_config("tiny", overrides=["data.held_out=[msrvtt-qa]"])
    assert "flickr8k-cn" in stage_tasks(cfg, "stage2")


def test_two_worker_deepspeed_step_trains_only_what_the_stage_allows(ray_cluster, data_dir, tmp_path):
    cfg = load_config("tiny", overrides=["train.num_workers=2", "train.zero_stage=2"])
    tok = build_tokenizer(cfg.model.tokenizer)
    init = str(tmp_path / "init")
    save_checkpoint(build_model(cfg.model, tok, seed=0), tok, cfg.model, init)

    out = str(tmp_path / "out")
    # A paper-style Stage II policy: Q-Former, projection and the LLM's q/v projections only.
    trainable = ["qformer.*", "query_tokens", "language_projection.*",
                 "language_model.model.layers.*.self_attn.q_proj.*", "language_model.model.layers.*.self_attn.v_proj.*"]
    plan = stage_plan(cfg, "stage2", data_dir, out, init_checkpoint=init, trainable=trainable,
                      max_steps=4, warmup_steps=1, batch_size=8, log_every=2, lr=1e-3)
    summary = fit(cfg, plan, str(tmp_path / "ray"), name="two-workers")

    assert summary["step"] == 4 and math.isfinite(summary["val_loss"])
    assert [h["step"] for h in summary["history"]] == [2, 4]
    before, after = load_file(f"{init}/model.safetensors"), load_file(f"{out}/model.safetensors")
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert "language_projection.weight" in changed and "language_model.model.layers.0.self_attn.q_proj.weight" in changed
    frozen = {k for k in before if k.startswith("vision_model.") or k.endswith(("k_proj.weight", "o_proj.weight"))
              or "mlp" in k and k.startswith("language_model.")}
    assert frozen and not (frozen & changed), sorted(frozen & changed)[:5]
    assert set(summary["trainable"]) >= {"language_projection.weight", "query_tokens"}
