"""Ying-VLM assembly: tokenizer, prompt + label mask, collation, freeze policy, checkpoints."""

import io
import os

import pytest
import torch
from PIL import Image

from ying.config import load_config
from ying.model.checkpoint import load_checkpoint, save_checkpoint
from ying.model.inference import YingPredictor
from ying.model.processor import IGNORE_INDEX, YingProcessor
from ying.model.prompt import format_prompt
from ying.model.tokenizer import IMAGE_TOKEN, build_tokenizer
from ying.model.vlm import answer_loss, apply_freeze_policy, build_model, count_parameters


@pytest.fixture(scope="module")
def tiny():
    cfg = load_config("tiny")
    tok = build_tokenizer(cfg.model.tokenizer)
    model = build_model(cfg.model, tok, seed=0).eval()  # no dropout: exact comparisons below
    proc = YingProcessor(tok, cfg.model.vision.image_size, cfg.model.num_query_tokens, cfg.model.max_text_tokens)
    return cfg, tok, model, proc


def jpeg(color, size=40) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, "JPEG")
    return buf.getvalue()


def record(outputs="The answer is red.", n_images=1, inputs="What color is the circle?"):
    return {"images": [jpeg((200, 10 * i, 10)) for i in range(n_images)], "instruction": "Answer the question.",
            "inputs": inputs, "outputs": outputs}


def test_tokenizer_needs_no_download_and_covers_chinese(tiny):
    _, tok, _, _ = tiny
    for text in ["a red circle and a blue square on a grey background", "一个红色的圆形在蓝色的背景上", "ünïcode ✓ 😀"]:
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    ids = {tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.convert_tokens_to_ids(IMAGE_TOKEN)}
    assert len(ids) == 4 and None not in ids
    assert len(tok.encode(IMAGE_TOKEN, add_special_tokens=False)) == 1
    # Deterministic: the same repository always gives the same vocabulary.
    assert build_tokenizer(load_config("tiny").model.tokenizer).get_vocab() == tok.get_vocab()


def test_prompt_is_the_papers_format():
    assert format_prompt("Describe.", "") == "<human>:\nDescribe.\n\n<bot>:\n"
    assert format_prompt("Q?", "What?") == "<human>:\nQ?\nWhat?\n<bot>:\n"
    zh = format_prompt("请描述。", "", chinese_dialogue=True)
    assert zh.startswith("<human>:\n请根据我的指示,以及所给的图片,做出相应的回答。\n<bot>:\n好的。\n") and zh.endswith("<bot>:\n")


def test_label_mask_covers_the_answer_only(tiny):
    cfg, tok, _, proc = tiny
    rec = record(n_images=2)
    ex = proc.encode_train(rec)
    n_img = 2 * cfg.model.num_query_tokens
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    assert ex.input_ids[0] == tok.bos_token_id
    assert ex.input_ids[1 : 1 + n_img] == [image_id] * n_img and image_id not in ex.input_ids[1 + n_img :]
    answer_start = next(i for i, l in enumerate(ex.labels) if l != IGNORE_INDEX)
    # Everything before the answer (bos, image slots, instruction, question, "<bot>:") is masked...
    assert tok.decode(ex.input_ids[1 + n_img : answer_start]) == format_prompt(rec["instruction"], rec["inputs"])
    # ...and the unmasked labels are exactly the answer followed by eos.
    assert ex.labels[answer_start:] == ex.input_ids[answer_start:]
    assert ex.labels[-1] == tok.eos_token_id
    assert tok.decode(ex.labels[answer_start:-1]) == rec["outputs"]
    assert tuple(ex.pixel_values.shape) == (2, 3, cfg.model.vision.image_size, cfg.model.vision.image_size)


def test_video_frames_each_get_their_query_tokens(tiny):
    cfg, tok, model, proc = tiny
    batch = proc.collate([proc.encode_train(record(n_images=8)), proc.encode_train(record(n_images=1))])
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    assert (batch["input_ids"][0] == image_id).sum() == 8 * cfg.model.num_query_tokens
    assert (batch["input_ids"][1] == image_id).sum() == cfg.model.num_query_tokens
    assert batch["pixel_values"].shape[0] == 9  # frames of example 0, then the image of example 1
    loss, n = answer_loss(model, batch)
    assert torch.isfinite(loss) and n == int((batch["labels"] != IGNORE_INDEX).sum())


def test_collate_pads_right_for_training_and_left_for_generation(tiny):
    _, tok, _, proc = tiny
    short, long = proc.encode_train(record(outputs="red")), proc.encode_train(record(outputs="a long answer " * 5))
    right = proc.collate([short, long])
    left = proc.collate([short, long], pad_left=True)
    n = len(short.input_ids)
    assert right["input_ids"][0, :n].tolist() == short.input_ids and right["attention_mask"][0, n:].sum() == 0
    assert left["input_ids"][0, -n:].tolist() == short.input_ids and left["attention_mask"][0, :-n].sum() == 0
    assert (right["input_ids"][0, n:] == tok.pad_token_id).all()


def test_answer_loss_is_cross_entropy_over_answer_tokens(tiny):
    _, _, model, proc = tiny
    batch = proc.collate([proc.encode_train(record()), proc.encode_train(record(outputs="blue"))])
    loss, n = answer_loss(model, batch)
    with torch.no_grad():
        logits = model(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"],
                       attention_mask=batch["attention_mask"]).logits
    terms = []
    for b in range(2):
        for t in range(1, batch["input_ids"].shape[1]):
            if batch["labels"][b, t] != IGNORE_INDEX:
                terms.append(-torch.log_softmax(logits[b, t - 1], -1)[batch["labels"][b, t]])
    assert n == len(terms)
    assert torch.allclose(loss, torch.stack(terms).mean(), atol=1e-5)


def test_answer_loss_gradients_match_the_full_vocabulary_loss(tiny):
    """The LM head runs only at answer positions: the gradients must be those of the loss over every position's logits."""
    _, _, model, proc = tiny
    batch = proc.collate([proc.encode_train(record()), proc.encode_train(record(outputs="a long answer " * 3))])
    model.zero_grad(set_to_none=True)
    answer_loss(model, batch)[0].backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    logits = model(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"],
                   attention_mask=batch["attention_mask"]).logits
    torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), batch["labels"][:, 1:].reshape(-1),
                                      ignore_index=IGNORE_INDEX).backward()
    full = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    assert ours.keys() == full.keys() and "language_model.lm_head.weight" in ours and "vision_model.embeddings.patch_embedding.weight" in ours
    for name in ours:
        assert torch.allclose(ours[name], full[name], rtol=1e-4, atol=1e-6), name


def _trainable(model, patterns):
    return set(apply_freeze_policy(model, patterns))


def test_freeze_policy_tiny_and_paper_stages(tiny):
    cfg, tok, model, _ = tiny
    names = [n for n, _ in model.named_parameters()]
    assert _trainable(model, cfg.train.stage1.trainable) == set(names)  # a random-init LLM must learn language

    paper = load_config("paper", overrides=["model.llm_path=null", "model.blip2_path=null", "model.tokenizer.kind=bpe"])
    big = build_model(paper.model, tok, device="meta")  # shapes only: no memory, no weights
    s1 = _trainable(big, paper.train.stage1.trainable)
    assert s1 and all(n.startswith(("qformer.", "query_tokens", "language_projection.")) for n in s1)
    assert not any(n.startswith(("vision_model.", "language_model.")) for n in s1)
    stage1_params = count_parameters(big, trainable_only=True)
    # Paper §3.1.1: "a total 130M parameters" (Q-Former + projection); HF's Q-Former has no text embeddings.
    assert 100e6 < stage1_params < 140e6, stage1_params

    s2 = _trainable(big, paper.train.stage2.trainable)
    llm = {n for n in s2 if n.startswith("language_model.")}
    assert s1 < s2 and llm == {n for n in s2 - s1}
    assert llm and all(n.endswith(("q_proj.weight", "v_proj.weight")) for n in llm)
    assert len(llm) == 2 * paper.model.llm.num_layers
    assert not any(p.requires_grad for n, p in big.named_parameters() if n.startswith("vision_model."))
    # The paper's LLM is LLaMA-13B-sized; the vision tower ViT-g.
    assert 12e9 < count_parameters(big) - count_parameters(big.vision_model) < 14.5e9
    assert 0.9e9 < count_parameters(big.vision_model) < 1.1e9


def test_a_pattern_that_matches_nothing_is_an_error(tiny):
    _, _, model, _ = tiny
    with pytest.raises(ValueError, match="match no parameter"):
        apply_freeze_policy(model, ["qformer.*", "language_model.*.qproj.*"])


def test_checkpoint_round_trip_is_safetensors_and_exact(tiny, tmp_path):
    cfg, tok, model, proc = tiny
    out = str(tmp_path / "ckpt")
    save_checkpoint(model, tok, cfg.model, out, {"stage": "test"})
    assert "model.safetensors" in os.listdir(out) and not any(f.endswith(".bin") for f in os.listdir(out))
    loaded, tok2, proc2, meta = load_checkpoint(out)
    assert meta["stage"] == "test" and tok2.get_vocab() == tok.get_vocab()
    batch = proc.collate([proc.encode_train(record())])
    with torch.no_grad():
        a = model(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"]).logits
        b = loaded(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"]).logits
    assert torch.equal(a, b)
    predictor = YingPredictor(loaded, tok2, proc2)
    examples = [record(), record(n_images=3, inputs="")]
    first = predictor.generate(examples, max_new_tokens=6)
    assert len(first) == 2 and first == predictor.generate(examples, max_new_tokens=6)  # greedy: deterministic
