"""Pretrained weights at the paper's scale: loaded in the training dtype, delta weights refused,
a broken LLM flagged, and the memory plan the README and cluster.yaml rely on."""

import math
import os
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
                            intermediate_size=q.intermediate_size, encoder_hidden_size=v.hidden_size,
                            cross_attention_frequency=q.cross_attention_frequency),
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


def test_a_checkpoint_whose_tensors_do_not_fit_the_model_is_named(tiny, pretrained_dirs):
    cfg, tok = tiny
    root, _, _ = pretrained_dirs
    wrong = cfg.model.model_copy(update={"blip2_path": str(root / "blip2"),
                                         "qformer": cfg.model.qformer.model_copy(update={"num_layers": 3})})
    with pytest.raises(ValueError, match=r"checkpoints lack .*qformer\.encoder\.layer\.2\."):
        build_model(wrong, tok)
    wider = cfg.model.model_copy(update={"blip2_path": str(root / "blip2"),
                                         "vision": cfg.model.vision.model_copy(update={"intermediate_size": 200})})
    with pytest.raises(ValueError, match=r"model.blip2_path=.*vision_model.*has shape"):
        build_model(wider, tok)


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


# --- sizes, image processing and tokenizer from the checkpoints (the release layouts) ------------

@pytest.fixture(scope="module")
def release_dirs(tmp_path_factory):
    from pretrained_checkpoints import write_pretrained_checkpoints

    return write_pretrained_checkpoints(tmp_path_factory.mktemp("release"))


def test_the_checkpoints_decide_sizes_image_processing_and_tokenizer(release_dirs):
    from pretrained_checkpoints import BLIP2_IMAGE_MEAN, BLIP2_IMAGE_SIZE, BLIP2_IMAGE_STD

    from ying.model.pretrained import resolve_pretrained

    cfg = resolve_pretrained(load_config("paper-cpu", overrides=[f"model.blip2_path={release_dirs.blip2}",
                                                                 f"model.llm_path={release_dirs.llm}"]))
    m = cfg.model
    blip2 = Blip2Config.from_pretrained(release_dirs.blip2)
    llm = LlamaConfig.from_pretrained(release_dirs.llm)
    assert (m.vision.image_size, m.vision.hidden_size, m.vision.num_layers) == (
        BLIP2_IMAGE_SIZE, blip2.vision_config.hidden_size, blip2.vision_config.num_hidden_layers)
    assert (m.qformer.hidden_size, m.qformer.cross_attention_frequency, m.num_query_tokens) == (
        blip2.qformer_config.hidden_size, 2, blip2.num_query_tokens)
    assert (m.llm.hidden_size, m.llm.num_layers, m.llm.num_heads) == (llm.hidden_size, llm.num_hidden_layers,
                                                                      llm.num_attention_heads)
    assert list(m.vision.image_mean) == BLIP2_IMAGE_MEAN and list(m.vision.image_std) == BLIP2_IMAGE_STD
    tok = build_tokenizer(m.tokenizer)  # the LLM's own, with Ying's <image> added
    assert m.tokenizer.path == str(release_dirs.llm) and tok.convert_tokens_to_ids("<image>") == llm.vocab_size
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<s>", "</s>", "<pad>")
    assert "<unk>" not in tok.convert_ids_to_tokens(tok("中国的首都是北京。").input_ids)


def test_a_size_set_by_the_user_that_disagrees_with_the_checkpoint_names_both(release_dirs):
    from ying.model.pretrained import resolve_pretrained

    paths = [f"model.blip2_path={release_dirs.blip2}", f"model.llm_path={release_dirs.llm}"]
    # The preset's own sizes (the paper's) are only defaults: the checkpoints replace them silently.
    assert resolve_pretrained(load_config("paper-cpu", overrides=paths)).model.llm.hidden_size != 5120
    with pytest.raises(ConfigError) as err:
        resolve_pretrained(load_config("paper-cpu", overrides=paths + ["model.llm.num_layers=40",
                                                                       "model.vision.image_size=224"]))
    text = str(err.value)
    assert "model.llm.num_layers=40 (set by you)" in text and f"{release_dirs.llm}/config.json" in text
    assert "model.vision.image_size=224 (set by you)" in text and "vision_config.image_size" in text
    with pytest.raises(FileNotFoundError, match="model.llm_path=/nowhere: no such directory"):
        resolve_pretrained(load_config("paper-cpu", overrides=paths[:1] + ["model.llm_path=/nowhere"]))


def test_the_written_checkpoints_are_the_same_bytes_for_the_same_seed(release_dirs, tmp_path):
    from pretrained_checkpoints import write_pretrained_checkpoints

    again = write_pretrained_checkpoints(tmp_path)
    for name in ("blip2-opt/model.safetensors", "blip2-opt/preprocessor_config.json", "llama/model.safetensors",
                 "llama/tokenizer.json"):
        assert (again.blip2.parent / name).read_bytes() == (release_dirs.blip2.parent / name).read_bytes(), name


def test_a_partitioned_build_equals_a_plain_one(release_dirs, tmp_path):
    """ZeRO-3 with zero_init on two ranks, filled module by module, holds exactly the plain build's weights."""
    script = tmp_path / "partitioned.py"
    script.write_text(_PARTITIONED_BUILD)
    import subprocess
    import sys

    out = tmp_path / "gathered.safetensors"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={_free_port()}",
                           str(script), str(release_dirs.blip2), str(release_dirs.llm), str(out)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "DS_ACCELERATOR": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    from safetensors.torch import load_file

    from ying.model.pretrained import resolve_pretrained

    cfg = resolve_pretrained(load_config("paper-cpu", overrides=[f"model.blip2_path={release_dirs.blip2}",
                                                                 f"model.llm_path={release_dirs.llm}"]))
    plain = build_model(cfg.model, build_tokenizer(cfg.model.tokenizer), seed=cfg.run.seed).state_dict()
    gathered = load_file(out)
    assert gathered.keys() == {k for k in plain if "rotary" not in k}
    assert all(torch.equal(gathered[k], plain[k]) for k in gathered)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_PARTITIONED_BUILD = '''
import sys

import deepspeed
import torch
import torch.distributed as dist
from safetensors.torch import save_file

from ying.config import load_config
from ying.model.pretrained import resolve_pretrained
from ying.model.tokenizer import build_tokenizer
from ying.model.vlm import build_model
from ying.train.loop import deepspeed_config

blip2, llm, out = sys.argv[1:]
dist.init_process_group("gloo")
cfg = resolve_pretrained(load_config("paper-cpu", overrides=[f"model.blip2_path={blip2}", f"model.llm_path={llm}"]))
model = build_model(cfg.model, build_tokenizer(cfg.model.tokenizer), seed=cfg.run.seed,
                    partition=deepspeed_config(2, 1, 3, 1.0, "float32"))
# Every parameter is a partition here: a rank holds a part of it, never the whole model (BLIP-2's fused
# qkv bias is assigned after its module is built, so deepspeed.initialize partitions it later).
whole = [n for n, p in model.named_parameters() if not hasattr(p, "ds_tensor")]
assert all(n.endswith("self_attn.qkv.bias") for n in whole), whole
assert all(p.ds_tensor.numel() < p.ds_numel for p in model.parameters() if hasattr(p, "ds_tensor") and p.ds_numel > 1)
with deepspeed.zero.GatheredParameters(list(model.parameters())):
    state = {k: v.detach().clone().contiguous() for k, v in model.named_parameters()}
if dist.get_rank() == 0:
    save_file(state, out)
dist.destroy_process_group()
'''


def test_unreadable_checkpoints_are_named_before_anything_runs(release_dirs, tmp_path):
    from ying.model.pretrained import pretrained_problems

    (tmp_path / "no-tokenizer").mkdir()
    (tmp_path / "no-tokenizer" / "config.json").write_text((release_dirs.llm / "config.json").read_text())
    cfg = load_config("paper-cpu", overrides=[f"model.blip2_path={release_dirs.llm}",  # a LLaMA, not a BLIP-2
                                              f"model.llm_path={tmp_path / 'no-tokenizer'}"])
    problems = pretrained_problems(cfg)
    assert problems == [
        f"model.blip2_path={release_dirs.llm} has no preprocessor_config.json: not a folder saved with save_pretrained",
        f"model.llm_path={tmp_path / 'no-tokenizer'} has no tokenizer.json or tokenizer.model: Ying uses the LLM's "
        "own tokenizer: save it beside the weights (tokenizer.save_pretrained)"]
    good = load_config("paper-cpu", overrides=[f"model.blip2_path={release_dirs.blip2}",
                                               f"model.llm_path={release_dirs.llm}"])
    assert pretrained_problems(good) == []
