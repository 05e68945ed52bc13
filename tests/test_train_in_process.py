"""A 1-worker plan trained in the caller's process (Ray Train's local mode, how a Tune trial of one
worker trains) is the same training as in a worker group: the same weights, byte for byte."""

import os

import pytest
import torch.distributed

from tests.test_train import write_records
from ying.config import load_config
from ying.model.checkpoint import save_checkpoint
from ying.model.tokenizer import build_tokenizer
from ying.model.vlm import build_model
from ying.train.stages import fit, stage_plan


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("in_process")
    data = write_records(root / "data", {"coco": {"train": 16, "validation": 4}, "vqa-v2": {"train": 16, "validation": 4}})
    cfg = load_config("tiny", overrides=["train.num_workers=1"])
    tok = build_tokenizer(cfg.model.tokenizer)
    init = str(root / "init")
    save_checkpoint(build_model(cfg.model, tok, seed=0), tok, cfg.model, init)
    return cfg, data, init, root


def _train(cfg, data, init, out, in_process):
    plan = stage_plan(cfg, "stage2", data, str(out / "hf"), init_checkpoint=init, max_steps=4, warmup_steps=1,
                      batch_size=4, log_every=2, eval_every=2, lr=1e-3, val_examples=4)
    return fit(cfg, plan, str(out / "ray"), in_process=in_process)


def test_in_process_training_gives_the_worker_groups_bytes_and_leaves_the_process_clean(ray_cluster, setup):
    cfg, data, init, root = setup
    before = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "MASTER_PORT")}
    group = _train(cfg, data, init, root / "group", in_process=False)
    local = _train(cfg, data, init, root / "local", in_process=True)
    # A second in-process run in the same process, as a reused Tune trial does: it starts cleanly.
    again = _train(cfg, data, init, root / "again", in_process=True)

    weights = [(root / run / "hf" / "model.safetensors").read_bytes() for run in ("group", "local", "again")]
    assert weights[0] == weights[1] == weights[2]
    assert [h["loss"] for h in group["history"]] == [h["loss"] for h in local["history"]]
    assert [h["val_loss"] for h in group["history"] if "val_loss" in h] == \
        [h["val_loss"] for h in local["history"] if "val_loss" in h]
    assert group["val_loss"] == local["val_loss"] == again["val_loss"]
    assert (group["in_process"], local["in_process"]) == (False, True)
    # The resume checkpoints are written as a worker's would be: a re-run of the same plan trains nothing.
    rerun = _train(cfg, data, init, root / "local", in_process=True)
    assert rerun["resumed_from_step"] == 4 and rerun["step"] == 4
    # The process group and the torchrun variables were the fit's own.
    assert not torch.distributed.is_initialized()
    assert {k: os.environ.get(k) for k in before} == before
    # Its start-up is timed like a worker's; its process started before the fit, so it counts from the fit.
    t = local["timings"]
    assert t["process_to_loop"] == t["to_loop"] and 0 < t["overhead"] < t["fit"]


def test_only_a_one_worker_plan_trains_in_process(setup, tmp_path):
    cfg, data, init, _ = setup
    two = load_config("tiny", overrides=["train.num_workers=2"])
    plan = stage_plan(two, "stage2", data, None, init_checkpoint=init, max_steps=1, warmup_steps=1, batch_size=4, lr=1e-3)
    with pytest.raises(ValueError, match="only a 1-worker plan trains in its caller's process"):
        fit(two, plan, str(tmp_path / "ray"), in_process=True)


@pytest.mark.parametrize("window", [8, 16384])  # shuffle windows smaller than a share, and one full shuffle
def test_reading_the_next_epoch_ahead_trains_the_same_bytes(ray_cluster, setup, window):
    """``train.read_ahead``: the next epoch and the validation sample are read on a thread while an
    epoch trains. What a step trains on is the same record stream, so the weights are the same bytes."""
    cfg, data, init, root = setup
    runs = {}
    for ahead in (True, False):
        c = load_config("tiny", overrides=["train.num_workers=1", f"train.read_ahead={str(ahead).lower()}",
                                           f"train.shuffle_buffer={window}"])
        out = root / f"ahead-{ahead}-{window}"
        # 32 records, 4 a step: 20 steps are 2.5 epochs, with a validation every 5 steps.
        plan = stage_plan(c, "stage2", data, str(out / "hf"), init_checkpoint=init, max_steps=20, warmup_steps=1,
                          batch_size=4, log_every=5, eval_every=5, lr=1e-3, val_examples=4)
        runs[ahead] = fit(c, plan, str(out / "ray"), in_process=True)
        runs[ahead]["weights"] = (out / "hf" / "model.safetensors").read_bytes()
    assert runs[True]["weights"] == runs[False]["weights"]
    assert [h["loss"] for h in runs[True]["history"]] == [h["loss"] for h in runs[False]["history"]]
    assert max(h["epoch"] for h in runs[True]["history"]) == 2
    assert runs[True]["val_loss"] == runs[False]["val_loss"] is not None
    # How long training waited on its records is reported beside its seconds.
    assert all(0 <= r["timings"]["worker"]["train_data_wait"] <= r["train_seconds"] for r in runs.values())


def test_a_gpu_stage_or_model_task_exits_when_it_ends_and_a_cpu_one_stays_for_the_next():
    """A 1-worker stage (and a 1-actor eval) runs as a Ray task so that the job's pooled process, with
    torch and transformers imported, serves the next one. On a GPU that process must exit instead, or
    its CUDA context and cached blocks stay on the GPU: Ray sets max_calls=1 only for GPUs asked for
    in @ray.remote (never through .options()), so the GPU tasks are their own remote functions."""
    from ying.eval import predictors
    from ying.train import stages

    for gpu, cpu in ((stages._fit_in_gpu_task, stages._fit_in_task),
                     (predictors._answer_in_gpu_task, predictors._answer_in_task)):
        assert (gpu._max_calls, gpu._default_options["num_gpus"]) == (1, 1)
        assert cpu._max_calls == 0 and "num_gpus" not in cpu._default_options  # 0: Ray reuses the process
