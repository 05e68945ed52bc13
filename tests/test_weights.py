"""Pretrained weights at the paper's scale: loaded in the training dtype, delta weights refused,
a broken LLM flagged, and the memory plan the README and cluster.yaml rely on."""

import math
import re
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from transformers import Blip2Config, Blip2ForConditionalGeneration, LlamaConfig, LlamaForCausalLM, OPTConfig

from ying.config import ConfigError, load_config
from ying.model.tokenizer import build_tokenizer
from ying.model.vlm import build_model
from ying.model.weights import PERPLEXITY_WARN_ABOVE, SANITY_SENTENCES, llm_perplexity, llm_sanity
from ying.train.memory import plan_memory

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny():
    cfg = load_config("tiny")
    return cfg, build_tokenizer(cfg.model.tokenizer)


@pytest.fixture(scope="module")
def pretrained_dirs(tmp_path_factory, tiny):
    """A BLIP-2 (with its own OPT LLM, as BLIP2-OPT-2.7B has) and a LLaMA, at the tiny preset's widths."""
    cfg, _ = tiny
    root = tmp_path_factory.mktemp("pretrained")
    v, q = cfg.model.vision, cfg.model.qformer
    blip2 = Blip2ForConditionalGeneration(Blip2Config(
        vision_config=dict(image_size=v.image_size, patch_size=v.patch_size, hidden_size=v.hidden_size,
                           num_hidden_layers=v.num_layers, num_attention_heads=v.num_heads,
                           intermediate_size=v.intermediate_size),
        qformer_config=dict(hidden_size=q.hidden_size, num_hidden_layers=q.num_layers, num_attention_heads=q.num_heads,
                            intermediate_size=q.intermediate_size, encoder_hidden_size=v.hidden_size),
        text_config=OPTConfig(hidden_size=32, num_hidden_layers=1, ffn_dim=64, num_attention_heads=2,
                              vocab_size=64, word_embed_proj_dim=32).to_dict(),
        num_query_tokens=cfg.model.num_query_tokens))
    blip2.save_pretrained(root / "blip2")
    llm = LlamaForCausalLM(LlamaConfig(hidden_size=96, num_hidden_layers=2, num_attention_heads=4,
                                       intermediate_size=384, vocab_size=1000))
    llm.save_pretrained(root / "llm")
    return root, blip2, llm


def test_pretrained_parts_load_straight_into_bfloat16(tiny, pretrained_dirs):
    cfg, tok = tiny
    root, blip2, llm = pretrained_dirs
    model_cfg = cfg.model.model_copy(update={"blip2_path": str(root / "blip2"), "llm_path": str(root / "llm"),
                                             "dtype": "bfloat16"})
    model = build_model(model_cfg, tok)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])

    def same(ours, theirs):
        return torch.equal(ours, theirs.to(torch.bfloat16))

    assert same(model.vision_model.embeddings.patch_embedding.weight, blip2.vision_model.embeddings.patch_embedding.weight)
    assert same(model.query_tokens, blip2.query_tokens)
    assert same(model.language_model.model.layers[1].self_attn.q_proj.weight, llm.model.layers[1].self_attn.q_proj.weight)
    # The LLM grew rows for our tokenizer's extra tokens; the first 1000 are the checkpoint's.
    embed = model.language_model.model.embed_tokens.weight
    assert embed.shape[0] == len(tok) and same(embed[:1000], llm.model.embed_tokens.weight)
    # The projection is new: initialised (not zeros, not garbage), BLIP-2's OPT projection ignored.
    proj = model.language_projection.weight.float()
    assert proj.shape == (96, 96) and torch.isfinite(proj).all() and 0 < proj.std() < 0.1


def test_checkpoint_sizes_that_do_not_match_the_config_are_named(tiny, pretrained_dirs):
    cfg, tok = tiny
    root, _, _ = pretrained_dirs
    wrong = cfg.model.model_copy(update={"blip2_path": str(root / "blip2"),
                                         "qformer": cfg.model.qformer.model_copy(update={"num_layers": 3})})
    with pytest.raises(ValueError, match=r"model.qformer sizes .* do not match"):
        build_model(wrong, tok)


def test_delta_weights_are_refused_with_the_merge_recipe():
    with pytest.raises(ConfigError) as err:
        load_config("paper", overrides=["model.llm_path=IDEA-CCNL/Ziya-LLaMA-13B-v1"])
    message = str(err.value)
    assert "delta weights" in message and "apply_delta" in message and "model.llm_path=<merged-dir>" in message
    cache = "/root/.cache/huggingface/hub/models--IDEA-CCNL--Ziya-LLaMA-13B-v1/snapshots/abc"
    with pytest.raises(ConfigError, match="delta weights"):
        load_config("paper", overrides=[f"model.llm_path={cache}"])
    assert load_config("paper").model.llm_path.endswith("-merged")  # the preset points at a merged folder


def test_a_broken_llm_is_flagged_and_a_trained_one_is_not(tiny):
    _, tok = tiny
    torch.manual_seed(0)
    llm = LlamaForCausalLM(LlamaConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                                       intermediate_size=128, vocab_size=len(tok)))
    with pytest.warns(RuntimeWarning, match="probably broken"):
        random_ppl = llm_sanity(llm, tok, "/models/random")
    assert random_ppl > PERPLEXITY_WARN_ABOVE

    # The same model after learning the sentences: what any pretrained LLM already knows.
    opt = torch.optim.AdamW(llm.parameters(), lr=3e-3)
    batch = [tok(s, return_tensors="pt").input_ids for s in SANITY_SENTENCES]
    for _ in range(150):
        loss = sum(llm(input_ids=ids, labels=ids).loss for ids in batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning this time
        trained_ppl = llm_sanity(llm, tok, "/models/trained")
    assert trained_ppl < 10 and math.isclose(trained_ppl, llm_perplexity(llm, tok), rel_tol=1e-6)


def test_memory_plan_of_the_paper_preset_matches_the_cluster_gpus():
    paper = load_config("paper")
    plans = {(e.stage, e.zero_stage, e.gpu_gib): e for e in plan_memory(paper)}
    assert 13e9 < plans[("stage1", 2, 40)].total_params < 15e9
    # ZeRO-2 keeps the whole 16-bit model on every GPU: Stage II does not fit 40 GB; ZeRO-3 fits both.
    assert not plans[("stage2", 2, 40)].fits and plans[("stage2", 2, 80)].fits
    assert all(plans[(s, 3, 40)].fits for s in ("stage1", "stage2"))
    # Host memory per 8-GPU node: nothing near the ~1 TB of fp32 copies per rank.
    assert plans[("stage2", 3, 40)].host_per_node_gib < 200
    # The preset chooses a ZeRO stage that fits cluster.yaml's GPU worker type.
    cluster = yaml.safe_load((REPO / "cluster.yaml").read_text())
    instance = cluster["available_node_types"]["gpu_worker"]["node_config"]["InstanceType"]
    gpu_gb = {"p4d.24xlarge": 40, "p4de.24xlarge": 80, "p5.48xlarge": 80}[instance]
    assert all(plans[(s, paper.train.zero_stage, gpu_gb)].fits for s in ("stage1", "stage2"))
    readme = (REPO / "README.md").read_text()
    row = re.search(r"\| stage2 \| 2,206M \| 3 \| 40 GB \| ([\d.]+) \| yes \|", readme)
    assert row and float(row.group(1)) == pytest.approx(plans[("stage2", 3, 40)].per_gpu_gib, abs=0.05)
