"""The ``pretrain`` stage: the mini-world's bilingual text, text-only batches, and the stage in the DAG."""

import json
import math
import re

import pyarrow.parquet as pq
import pytest
import torch

from ying.config import load_config
from ying.data.miniworld import generate_miniworld
from ying.data.miniworld.text import TEXT_TASKS, generate_text, text_records
from ying.data.instructions import load_pool
from ying.model.processor import IGNORE_INDEX, YingProcessor
from ying.model.tokenizer import build_tokenizer
from ying.model.vlm import answer_loss, apply_freeze_policy, build_model
from ying.pipeline import STAGES, pretrain_skipped

CJK = re.compile("[\u4e00-\u9fff]")


def test_the_text_is_deterministic_bilingual_and_per_seed():
    a, b = generate_text(0, 400), generate_text(0, 400)
    assert a == b
    assert generate_text(1, 400) != a and generate_text(0, 400, split="validation") != a
    langs = [d["lang"] for d in a]
    assert langs.count("en") == langs.count("zh") == 200
    for d in a:
        assert d["text"].strip()
        assert bool(CJK.search(d["text"])) == (d["lang"] == "zh"), d
    # Varied: many distinct documents, some in the chat format, about every colour and background.
    assert len({d["text"] for d in a}) > 300
    assert any(d["text"].startswith("<human>:") for d in a if d["lang"] == "zh")
    zh = " ".join(d["text"] for d in a if d["lang"] == "zh")
    assert all(w in zh for w in ("红色", "蓝色", "圆形", "正方形", "三角形", "星形", "背景", "两个", "三个"))


def test_the_text_holds_no_held_out_record_text(tmp_path):
    """No flickr8k-cn caption (nor msrvtt-qa question) of a mini-world run appears in the text, not
    even inside a longer document; nor any held-out task's instruction."""
    cfg = load_config("tiny")
    roots = generate_miniworld(str(tmp_path), cfg.miniworld, seed=0, tasks=["flickr8k-cn", "msrvtt-qa"])
    captions = {line.split(" ", 1)[1] for line in
                open(f"{roots['flickr8k-cn']}/data/flickr8kzhc.caption.txt", encoding="utf-8").read().splitlines()}
    questions = set()
    for split in ("train", "val", "test"):
        questions |= {q["question"] for q in json.load(open(f"{roots['msrvtt-qa']}/{split}_qa.json"))}
    assert len(captions) > 20 and questions
    held_out = captions | questions | set(load_pool("flickr8k-cn")) | set(load_pool("msrvtt-qa"))
    texts = [d["text"] for split in ("train", "validation") for d in generate_text(0, 4000, split)]
    hits = [(h, t) for t in texts for h in held_out if h in t]
    assert not hits, hits[:3]


def test_text_records_are_unified_records_without_images():
    records = text_records(0, {"train": 6, "validation": 2})
    assert [r["split"] for r in records] == ["train"] * 6 + ["validation"] * 2
    assert {r["task"] for r in records} == set(TEXT_TASKS.values())
    for r in records:
        assert r["images"] == [] and r["instruction"] == "" and r["inputs"] == "" and r["outputs"]
        assert r["lang"] == ("zh" if r["task"] == "text-zh" else "en")
        assert json.loads(r["meta"])["source"] == "miniworld-text"


def test_the_tokenizer_has_the_chinese_words():
    tok = build_tokenizer(load_config("tiny").model.tokenizer)
    for word in ("背景是", "图形", "一个红色的圆形", "正方形"):
        ids = tok.encode(word, add_special_tokens=False)
        assert tok.unk_token_id not in ids and tok.decode(ids) == word
    text = generate_text(0, 2)[1]["text"]
    assert len(tok.encode(text, add_special_tokens=False)) < len(text)  # words, not bytes


@pytest.fixture(scope="module")
def tiny():
    cfg = load_config("tiny")
    tok = build_tokenizer(cfg.model.tokenizer)
    return cfg, tok, YingProcessor.from_model_config(tok, cfg.model)


def test_a_text_record_is_a_causal_lm_example(tiny):
    cfg, tok, proc = tiny
    record = text_records(0, {"train": 2})[1]
    arrays = proc.encode_train_arrays(record)
    text_ids = tok.encode(record["outputs"], add_special_tokens=False)
    assert arrays["input_ids"].tolist() == [tok.bos_token_id] + text_ids + [tok.eos_token_id]
    assert arrays["labels"].tolist() == [IGNORE_INDEX] + text_ids + [tok.eos_token_id]
    assert arrays["pixels"].shape == (0, 3, cfg.model.vision.image_size, cfg.model.vision.image_size)
    # A text over the budget is cut, without eos.
    long = dict(record, outputs=" ".join([record["outputs"]] * 20))
    cut = proc.encode_train_arrays(long)
    assert len(cut["input_ids"]) == cfg.model.max_text_tokens and cut["input_ids"][-1] != tok.eos_token_id
    # An image record with an empty instruction is not text-only: it keeps its image slots.
    assert proc._train_ids({"images": [b"x"], "instruction": "", "inputs": "", "outputs": "red"})[0].count(
        proc.image_token_id) == cfg.model.num_query_tokens


def test_a_text_batch_trains_the_llm_only(tiny):
    cfg, tok, proc = tiny
    encoded = [proc.encode_train_arrays(r) for r in text_records(0, {"train": 4})]
    batch = proc.collate_arrays([e["input_ids"] for e in encoded], [e["labels"] for e in encoded],
                                [e["pixels"] for e in encoded])
    size = cfg.model.vision.image_size
    assert batch["pixel_values"].shape == (0, 3, size, size) and batch["input_ids"].shape[0] == 4
    model = build_model(cfg.model, tok, seed=0)
    apply_freeze_policy(model, ["language_model.*"])
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(5):
        loss, n = answer_loss(model, batch)
        assert n == int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) > 0
        # Every trainable parameter takes part in a text forward (ZeRO-2 reduces every one of them).
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    after = model.state_dict()
    for k, v in before.items():
        if k.startswith(("vision_model.", "qformer.", "query_tokens", "language_projection.")):
            assert torch.equal(v, after[k]), k
    assert not torch.equal(before["language_model.lm_head.weight"], after["language_model.lm_head.weight"])
    # Where more than the LLM trains (text mixed into an image stage), a text batch gives the rest a
    # zero gradient, not none: under ZeRO every rank reduces the same gradients whatever its batch holds.
    apply_freeze_policy(model, ["language_model.*", "vision_model.*", "qformer.*", "language_projection.*"])
    model.zero_grad(set_to_none=True)
    answer_loss(model, batch)[0].backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    assert all(not g.any() for n, g in grads.items() if not n.startswith("language_model."))
    # Placeholders without images are refused.
    bad = dict(batch, input_ids=batch["input_ids"].clone())
    bad["input_ids"][0, 1] = proc.image_token_id
    with pytest.raises(ValueError, match="no images"):
        answer_loss(model, bad)


def test_pretrain_is_skipped_for_a_pretrained_llm_or_when_off():
    assert pretrain_skipped(load_config("tiny")) is None
    assert "train.pretrain.enabled=false" in pretrain_skipped(load_config("tiny", overrides=["train.pretrain.enabled=false"]))
    assert "model.llm_path" in pretrain_skipped(load_config("tiny", overrides=["model.llm_path=/models/llama"]))
    for preset in ("paper", "paper-cpu"):
        cfg = load_config(preset, overrides=["model.blip2_path=/m/blip2", "model.llm_path=/m/llama"])
        assert pretrain_skipped(cfg)
    by_name = {s.name: s for s in STAGES}
    assert by_name["pretrain"].deps == [] and "pretrain" in by_name["stage1"].deps
    assert by_name["pretrain"].after(load_config("tiny")) == ["qc"]


def test_a_bad_pretrain_batch_is_a_config_error():
    from ying.config import ConfigError

    with pytest.raises(ConfigError, match="train.pretrain.batch_size"):
        load_config("tiny", overrides=["train.pretrain.batch_size=3"])
    load_config("tiny", overrides=["train.pretrain.batch_size=3", "train.pretrain.enabled=false"])


# One worker: the stages train in Ray tasks, not worker groups (test_full_dag runs pretrain on two).
SMALL_PRETRAIN = ["train.pretrain.texts=256", "train.pretrain.validation_texts=32", "train.pretrain.max_steps=30",
                  "train.pretrain.warmup_steps=3", "train.pretrain.batch_size=16", "train.pretrain.val_examples=32",
                  "train.pretrain.lr=2e-3", "train.num_workers=1"]


def test_the_pretrain_stage_lowers_the_text_loss_and_stage1_starts_from_it(ray_cluster, tmp_path):
    """The stage through the DAG's own runner: text records written, a Ray Train run whose loss falls;
    Stage I starts from its checkpoint; a skipped run (pretrain off) writes nothing."""
    from ying.workflow import run_pipeline

    cfg = load_config("tiny", overrides=[f"run.run_dir={tmp_path / 'run'}", *SMALL_PRETRAIN])
    out = run_pipeline(STAGES, cfg, targets={"pretrain"})["pretrain"]["outputs"]
    history = [h["loss"] for h in out["history"]]
    assert out["step"] == 30 and math.isfinite(out["val_loss"])
    assert history[-1] < history[0] - 1.0, history
    assert out["val_loss"] < math.log(len(build_tokenizer(cfg.model.tokenizer)))  # well below a uniform guess
    assert out["counts"] == {"text-en": {"train": 128, "validation": 16}, "text-zh": {"train": 128, "validation": 16}}
    files = sorted((tmp_path / "run" / "pretrain" / "records" / "train").glob("*.parquet"))
    table = pq.read_table(files[0])
    assert set(table.column("task").to_pylist()) <= set(TEXT_TASKS.values())
    assert out["checkpoint"].endswith("/pretrain/hf")

    # Stage I as the DAG runs it, on a few caption records: it starts from the pretrain checkpoint.
    from safetensors.torch import load_file
    from test_train import write_records

    from ying.pipeline import run_stage1
    from ying.workflow import StageContext

    qc_dir = write_records(tmp_path / "qc", {"coco": {"train": 8, "validation": 4}})
    s1_cfg = load_config("tiny", overrides=[f"run.run_dir={tmp_path / 'run'}", *SMALL_PRETRAIN,
                                            "train.stage1.max_steps=2", "train.stage1.warmup_steps=1",
                                            "train.stage1.batch_size=4", "train.stage1.val_examples=4",
                                            "train.stage1.lr=1e-5"])
    ctx = StageContext(s1_cfg, str(tmp_path / "run" / "stage1"),
                       {"qc": {"outputs": {"data_dir": qc_dir}}, "pretrain": {"outputs": out}}, fingerprint="t")
    s1 = run_stage1(ctx)
    assert s1["plan"]["init_checkpoint"] == out["checkpoint"]
    key = "language_model.model.embed_tokens.weight"
    pretrained = load_file(f"{out['checkpoint']}/model.safetensors")[key]
    after_s1 = load_file(f"{s1['checkpoint']}/model.safetensors")[key]
    random_init = build_model(cfg.model, build_tokenizer(cfg.model.tokenizer), seed=cfg.run.seed).state_dict()[key]
    assert (after_s1 - pretrained).abs().max() < 0.01 < (after_s1 - random_init).abs().max()

    skipped = load_config("tiny", overrides=[f"run.run_dir={tmp_path / 'run2'}", "train.pretrain.enabled=false"])
    out2 = run_pipeline(STAGES, skipped, targets={"pretrain"})["pretrain"]["outputs"]
    assert out2 == {"skipped": "train.pretrain.enabled=false", "checkpoint": None}
    assert not (tmp_path / "run2" / "pretrain" / "records").exists()
