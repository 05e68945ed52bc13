"""The paper preset's path, end to end, on pretrained checkpoints written in the releases' layouts.

`python workflows/full.py --preset paper-cpu` with a BLIP-2 (OPT language model) and a LLaMA-family
LLM from `tests/pretrained_checkpoints.py`: ZeRO-3 with zero_init builds the model partitioned and
fills it from the checkpoints, Stage I trains the Q-Former and the projection, Stage II also the
LLM's q_proj/v_proj, then eval (the Chinese and video suites), the report and Serve. What a
researcher relies on is read back from the saved `stage2/hf` safetensors: the frozen weights are
the checkpoints' bit for bit, the trainable ones moved, and the result reloads with transformers.
"""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pretrained_checkpoints import BLIP2_IMAGE_MEAN, BLIP2_IMAGE_SIZE, write_pretrained_checkpoints

REPO = Path(__file__).resolve().parent.parent

# The preset, shrunk further so the whole DAG runs in a few minutes on 2 CPUs.
SMALL = [
    "miniworld.n_images={coco/train: 48, coco/validation: 8, coco/test: 8, vqa-v2/train: 24, vqa-v2/validation: 8,"
    " flickr8k-cn/train: 4, flickr8k-cn/validation: 4, flickr8k-cn/test: 6}",
    "miniworld.n_videos={msrvtt-qa/train: 2, msrvtt-qa/validation: 2, msrvtt-qa/test: 3}",
    "train.stage1.max_steps=6", "train.stage1.checkpoint_every=3", "train.stage1.warmup_steps=2",
    "train.stage2.max_steps=6", "train.stage2.checkpoint_every=3", "train.stage2.warmup_steps=2",
    "eval.max_per_task=4", "eval.max_new_tokens=6",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return write_pretrained_checkpoints(tmp_path_factory.mktemp("pretrained"))


@pytest.fixture(scope="module")
def paper_cpu_run(ray_cluster, checkpoints, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("paper-cpu") / "run"
    address = ray_cluster.get_runtime_context().gcs_address
    cmd = [sys.executable, str(REPO / "workflows" / "full.py"), "--preset", "paper-cpu", "--run-dir", str(run_dir),
           "--address", address, "--set", f"model.blip2_path={checkpoints.blip2}",
           "--set", f"model.llm_path={checkpoints.llm}", "--set", f"serve.port={_free_port()}"]
    for override in SMALL:
        cmd += ["--set", override]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    return run_dir, proc.stdout + proc.stderr


def _manifest(run_dir: Path, stage: str) -> dict:
    return json.loads((run_dir / stage / "_manifest.json").read_text())


def test_paper_cpu_refuses_to_start_without_both_checkpoints(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "workflows" / "full.py"), "--preset", "paper-cpu",
                           "--run-dir", str(tmp_path / "run")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "model.blip2_path and model.llm_path are not set" in proc.stderr
    assert "pretrained_checkpoints.py" in proc.stderr  # how to get some
    assert not (tmp_path / "run").exists()  # refused before Ray started


def test_stage2_keeps_frozen_weights_and_trains_the_papers_sets(paper_cpu_run, checkpoints):
    run_dir, _ = paper_cpu_run
    ours = load_file(run_dir / "stage2" / "hf" / "model.safetensors")
    blip2 = load_file(checkpoints.blip2 / "model.safetensors")
    llm = load_file(checkpoints.llm / "model.safetensors")

    vision = [k for k in blip2 if k.startswith("vision_model.")]
    assert vision and all(torch.equal(ours[k], blip2[k]) for k in vision), "the vision tower moved"

    trained_llm = {k for k in llm if k.endswith(("q_proj.weight", "v_proj.weight"))}
    frozen_llm = [k for k in llm if k not in trained_llm]
    for k in frozen_llm:  # the embedding and LM head grew rows for <image>: the checkpoint's rows come first
        theirs, mine = llm[k], ours[f"language_model.{k}"]
        assert torch.equal(mine[: theirs.shape[0]], theirs), f"frozen LLM tensor {k} changed"
    assert all(not torch.equal(ours[f"language_model.{k}"], llm[k]) for k in trained_llm), "q_proj/v_proj did not train"

    qformer = [k for k in blip2 if k.startswith("qformer.") and k.endswith("dense.weight")]
    assert any(not torch.equal(ours[k], blip2[k]) for k in qformer), "the Q-Former did not train"
    assert not torch.equal(ours["query_tokens"], blip2["query_tokens"])


def test_the_checkpoint_reloads_with_transformers_at_the_checkpoints_sizes(paper_cpu_run, checkpoints):
    from transformers import Blip2ForConditionalGeneration

    run_dir, _ = paper_cpu_run
    model = Blip2ForConditionalGeneration.from_pretrained(run_dir / "stage2" / "hf")
    assert model.config.vision_config.image_size == BLIP2_IMAGE_SIZE
    assert model.config.text_config.hidden_size == json.loads((checkpoints.llm / "config.json").read_text())["hidden_size"]
    meta = json.loads((run_dir / "stage2" / "hf" / "ying_model.json").read_text())
    # The processor of every later stage normalises as BLIP-2's own preprocessor_config.json says.
    assert list(meta["model"]["vision"]["image_mean"]) == BLIP2_IMAGE_MEAN
    assert meta["model"]["tokenizer"] == {"kind": "pretrained", "vocab_size": 1024, "path": str(checkpoints.llm)}


def test_each_stage_ran_zero3_with_zero_init_and_eval_and_serve_followed(paper_cpu_run):
    run_dir, log = paper_cpu_run
    for stage in ("stage1", "stage2"):
        outputs = _manifest(run_dir, stage)["outputs"]
        assert (outputs["zero_stage"], outputs["zero_init"]) == (3, True)
    assert "[stage1] LLM from" in log and "perplexity" in log  # the sanity check ran on the gathered weights
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    scores = json.dumps(metrics)
    assert "flickr8k-cn" in scores and "msrvtt-qa" in scores  # the held-out Chinese and video tasks
    served = _manifest(run_dir, "serve")["outputs"]
    assert "stage2" in served["models"] and isinstance(served["check"]["output"], str)  # answered over HTTP
    assert "use_cache=True" not in log  # no warning a user can't act on
