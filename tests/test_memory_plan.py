"""The memory plan of inference: the paper preset's eval actors and Serve replicas on one GPU each."""

from pathlib import Path

import pytest
import yaml

from ying.cli import main
from ying.config import load_config
from ying.train.memory import GIB, plan_inference_memory

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def paper():
    cfg = load_config("paper")
    return cfg, {(e.job, e.gpu_gib): e for e in plan_inference_memory(cfg)}


def test_paper_eval_and_serve_fit_one_gpu_of_the_cluster(paper):
    cfg, plans = paper
    # cluster.yaml's GPU workers decide the card: each eval actor and Serve replica asks for one.
    cluster = yaml.safe_load((REPO / "cluster.yaml").read_text())
    instance = cluster["available_node_types"]["gpu_worker"]["node_config"]["InstanceType"]
    gpu_gb = {"p4d.24xlarge": 40, "p4de.24xlarge": 80, "p5.48xlarge": 80}[instance]
    assert cfg.eval.use_gpu and cfg.serve.num_gpus_per_replica == 1
    for job in ("eval", "serve"):
        e = plans[(job, gpu_gb)]
        assert e.fits, f"{job}: {e.per_gpu_gib:.1f} GiB on a {gpu_gb} GB GPU ({e.parts})"
        # 16-bit weights of the whole 14B model, one model per GPU.
        assert e.dtype == "bfloat16" and e.models == 1
        assert e.parts["weights"] == pytest.approx(2 * e.total_params / GIB) and 13e9 < e.total_params < 15e9
    # The longest sequences each job can reach: eval's 8 video frames and caption length, Serve's
    # images and token limit, each with the whole text budget.
    q, text = cfg.model.num_query_tokens, cfg.model.max_text_tokens
    assert plans[("eval", 40)].seq_len == 8 * q + 1 + text + max(cfg.eval.max_new_tokens, cfg.eval.caption_max_new_tokens)
    assert plans[("serve", 40)].seq_len == cfg.serve.max_images * q + 1 + text + cfg.serve.max_tokens
    # LLaMA-13B keeps 2 x 40 layers x 5120 values per token: 0.78 MiB in bfloat16, for every row of a batch.
    serve = plans[("serve", 40)]
    assert serve.parts["kv_cache"] * GIB == 2 * 40 * 5120 * 2 * serve.seq_len * cfg.serve.max_batch_size


def test_float32_weights_or_a_second_served_model_would_not_fit_40_gb():
    # What evaluation did before loading in the config's dtype on a GPU, and Serve's default of two
    # models per replica: both need more than a 40 GB A100.
    fp32 = load_config("paper", overrides=["model.dtype=float32"])
    assert not {e.job: e for e in plan_inference_memory(fp32, gpu_sizes_gib=(40,))}["eval"].fits
    two = load_config("paper", overrides=["serve.max_models_per_replica=2"])
    assert not {e.job: e for e in plan_inference_memory(two, gpu_sizes_gib=(40,))}["serve"].fits


def test_ying_plan_memory_prints_the_eval_and_serve_rows(paper, capsys):
    _, plans = paper
    main(["plan-memory", "--preset", "paper"])
    out = capsys.readouterr().out
    for job in ("eval", "serve"):
        e = plans[(job, 40)]
        assert f"| {job} | {e.batch_size} | {e.seq_len} | 1 | 40 GB | {e.per_gpu_gib:.1f} | yes |" in out, out
    assert "| stage2 | 2,206M | 3 | 40 GB |" in out  # the training rows stay
