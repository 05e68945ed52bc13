"""benchmarks/gpu_check.py: its --smoke run goes through the product's training path and reports
what a GPU run reports, and the MFU's FLOPs count matches what torch counts on a real step."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _env() -> dict[str, str]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "DS_ACCELERATOR": "cpu"}
    env.pop("RAY_ADDRESS", None)  # the script starts a cluster of its own
    return env


def test_smoke_runs_ray_train_deepspeed_and_generates(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--workdir", str(tmp_path / "work")],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["path"] == "ray_train_deepspeed"
    assert result["model"]["zero_stage"] == 3 and result["model"]["gradient_checkpointing"] is True
    for stage in ("stage1", "stage2"):
        figures = result[stage]
        assert figures["tokens_per_s"] > 0 and figures["model_flops_per_token"] > 0, figures
        # Every example is cut to the same length, so the loop's count is steps x batch x length.
        batch = figures["micro_batch"] * figures["accumulation"]
        assert figures["tokens_trained"] == figures["steps"] * batch * result["seq_tokens"], figures
        assert figures["mfu"] is None  # no peak FLOP/s for a CPU
    assert result["stage2"]["mfu_goal"] == 0.45
    # Stage II trains the LLM's q/v projections on top of Stage I's set.
    assert result["stage2"]["trainable_params"] > result["stage1"]["trainable_params"]
    generation = result["generation"]
    assert generation["tokens_per_s"] > 0 and generation["batch"] == 2 and generation["new_tokens"] == 4
    assert set(result["phases_s"]) >= {"data", "ray_start", "stage1", "stage2", "generation", "total"}
    # The lines the product's loop prints come through from the training worker.
    assert "[stage1] step 2/2" in out and "[stage2] step 2/2" in out
    assert not any(Path(tmp_path / "work" / stage / "ray_train").exists() for stage in ("stage1", "stage2"))


@pytest.mark.parametrize("stage", ["stage1", "stage2", "everything"])
def test_model_flops_match_torch_flop_counter(stage):
    """The count behind MFU against torch's FlopCounterMode on one real forward + backward (eager
    attention, so the attention matmuls are counted too; no gradient checkpointing, whose
    recomputation is not model FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    from ying.config import load_config
    from ying.model.processor import YingProcessor
    from ying.model.tokenizer import build_tokenizer
    from ying.model.vlm import answer_loss, apply_freeze_policy, build_model

    g = _gpu_check()
    cfg = load_config("paper", overrides=["model.blip2_path=null", "model.llm_path=null", "model.max_text_tokens=24",
                                          *g.SMOKE_MODEL, "model.llm.num_layers=2"])
    tokenizer = build_tokenizer(cfg.model.tokenizer)
    processor = YingProcessor.from_model_config(tokenizer, cfg.model)
    records = g.synthetic_records(2, cfg.model.vision.image_size, 24, tokenizer, seed=0)
    model = build_model(cfg.model, tokenizer, seed=0).train()
    model.set_attn_implementation("eager")
    patterns = ["*"] if stage == "everything" else getattr(cfg.train, stage).trainable
    trainable = set(apply_freeze_policy(model, patterns))
    batch = processor.collate([processor.encode_train(r) for r in records])
    seq = batch["input_ids"].shape[1]
    assert int(batch["attention_mask"].sum()) == 2 * seq  # no padding: both examples have the same length

    with FlopCounterMode(display=False) as counter:
        loss, _ = answer_loss(model, batch)
        loss.backward()
    counted = counter.get_total_flops()
    answer = int((batch["labels"] != -100).sum()) // 2
    assert answer == 24 // 2  # the answer cut to max_text_tokens // 2, as stage_figures counts it
    ours = 2 * g.model_flops_per_example(model, trainable, seq, answer)
    # The only difference: the rotary embedding's tiny position matmul, which the count leaves out.
    assert abs(ours - counted) / counted < 0.005, (stage, ours, counted)


def test_peak_table_reads_device_names():
    g = _gpu_check()
    assert g.peak_tflops("NVIDIA H100 80GB HBM3", None) == (989.0, "table: H100 SXM")
    assert g.peak_tflops("NVIDIA H100 PCIe", None) == (756.0, "table: H100 PCIe")
    assert g.peak_tflops("NVIDIA A100-SXM4-80GB", None)[0] == 312.0
    assert g.peak_tflops("NVIDIA H100 80GB HBM3", 500.0) == (500.0, "--peak-tflops")
    assert g.peak_tflops("NVIDIA L40", None)[0] == 181.0 and g.peak_tflops("NVIDIA L40S", None)[0] == 362.0
    assert g.peak_tflops("NVIDIA A10G", None) == (None, None)  # not the A10: NVIDIA publishes no peak for it
    assert g.peak_tflops("Some Future GPU", None) == (None, None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_without_a_gpu_it_stops_and_says_why():
    proc = subprocess.run([sys.executable, str(SCRIPT)], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    assert "no CUDA GPU visible" in proc.stderr and "--smoke" in proc.stderr and "Traceback" not in proc.stderr
