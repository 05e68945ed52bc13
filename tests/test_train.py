"""Training: the stage's records through Ray Data into a real 2-worker DeepSpeed run inside Ray Train."""

import io
import json
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
from ying.model.processor import YingProcessor
from ying.model.tokenizer import build_tokenizer
from ying.model.vlm import build_model
from ying.train.ingest import RecordPolicy, select_ids, stage_files
from ying.train.loop import lr_lambda
from ying.train.stages import fit, stage_plan, stage_tasks

COLORS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}


def _records(split: str, n: int, task: str) -> list[dict]:
    rows = []
    for i in range(n):
        name, rgb = list(COLORS.items())[i % 3]
        buf = io.BytesIO()
        Image.new("RGB", (32, 32), rgb).save(buf, "PNG")
        rows.append({"id": f"{task}-{split}-{i}", "task": task, "category": "captioning" if task == "coco" else "vqa",
                     "lang": "en", "split": split, "images": [buf.getvalue()], "instruction": "Say the colour.",
                     "inputs": "" if task == "coco" else "What color is it?",
                     "outputs": f"The colour is {name}." if task == "vqa-v2" else name,
                     "meta": json.dumps({"original_answer": name})})
    return rows


def write_records(root, counts: dict[str, dict[str, int]]) -> str:
    """One Parquet file per task and split, as the build writes them."""
    for task, splits in counts.items():
        for split, n in splits.items():
            (root / "records" / split).mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(_records(split, n, task), schema=RECORD_SCHEMA),
                           root / "records" / split / f"{task}-{split}-0.parquet")
    return str(root)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_records(tmp_path_factory.mktemp("records"),
                         {"coco": {"train": 12, "validation": 4}, "vqa-v2": {"train": 12, "validation": 4}})


def test_stage_files_skip_other_tasks_from_footers_and_ids_are_chosen_per_task(data_dir):
    _, files = stage_files(data_dir, "train", ["coco"])
    assert [f.rsplit("/", 1)[-1] for f in files] == ["coco-train-0.parquet"]
    chosen = select_ids(data_dir, "validation", ["coco", "vqa-v2"], 2, seed=0)
    assert {t: len(ids) for t, ids in chosen.items()} == {"coco": 2, "vqa-v2": 2}
    assert chosen == select_ids(data_dir, "validation", ["coco", "vqa-v2"], 2, seed=0)  # seeded
    assert chosen != select_ids(data_dir, "validation", ["coco", "vqa-v2"], 2, seed=1)


def test_schedule_warms_up_linearly_then_decays_by_cosine():
    assert lr_lambda(0, 10, 100) == pytest.approx(0.1) and lr_lambda(9, 10, 100) == pytest.approx(1.0)
    assert lr_lambda(55, 10, 100) == pytest.approx(0.5)
    assert lr_lambda(100, 10, 100) == pytest.approx(0.0, abs=1e-12)


def test_stage_tasks_follow_the_held_out_policy():
    cfg = load_config("tiny")
    assert stage_tasks(cfg, "stage1") == ["coco", "laion"]  # §3.1.1: COCO and LAION captions
    # no Chinese, no video (Figure 8)
    assert stage_tasks(cfg, "stage2") == ["coco", "vqa-v2", "coco-goi", "okvqa", "clevr", "visual-dialog"]
    cfg = load_config("tiny", overrides=["data.held_out=[msrvtt-qa]"])
    assert "flickr8k-cn" in stage_tasks(cfg, "stage2")


def test_a_cut_answer_gets_no_end_of_sequence_token():
    cfg = load_config("tiny")
    tok = build_tokenizer(cfg.model.tokenizer)
    proc = YingProcessor(tok, 64, 8, max_text_tokens=24)  # answers keep at most 12 tokens
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    record = {"images": [buf.getvalue()], "instruction": "Describe.", "inputs": ""}
    short = proc.encode_train_arrays({**record, "outputs": "red"})
    long = proc.encode_train_arrays({**record, "outputs": "a red circle beside a blue square " * 4})
    assert short["labels"][-1] == tok.eos_token_id
    assert tok.eos_token_id not in long["labels"].tolist()
    assert (long["labels"] != -100).sum() == 12


def test_ingest_reads_only_the_stage_tasks_and_applies_the_record_policy(ray_cluster, data_dir):
    from ying.train.ingest import collate_rows, encoded_rows, instruction_draw
    from ying.train.sampler import rank_segments

    cfg = load_config("tiny", overrides=["train.stage2.val_examples=4"])
    plan = stage_plan(cfg, "stage2", data_dir, None, tasks=["vqa-v2"], lr=1e-3,
                      policy={"instructions_per_task": 1, "answers": "original", "max_per_task": 5})
    assert plan.train_index.total == 5 and plan.train_index.files == ("vqa-v2-train-0.parquet",)
    tok = build_tokenizer(cfg.model.tokenizer)
    processor = YingProcessor.from_model_config(tok, cfg.model)
    index = plan.train_index
    train = list(encoded_rows(rank_segments(index, plan.seed, 0, 0, 1), index, processor, RecordPolicy(**plan.policy),
                              plan.seed, plan.ingest))
    assert len(train) == 5 and all(r["id"].startswith("vqa-v2-train-") for r in train)
    assert sorted(r["id"] for r in train) == sorted(select_ids(data_dir, "train", ["vqa-v2"], 5, 0)["vqa-v2"])
    first = train[0]
    text = tok.decode([int(t) for t, lab in zip(first["input_ids"], first["labels"]) if lab == -100 and t > 4])
    drawn = instruction_draw("vqa-v2", 1, plan.seed)
    assert drawn[0] in text  # k=1: every record shows the one instruction drawn for the task
    assert instruction_draw("vqa-v2", 4, 0) != instruction_draw("vqa-v2", 4, 1)  # drawn at random, by seed
    assert all(i in load_pool_first_8("vqa-v2") for i in instruction_draw("vqa-v2", 8, 3))  # 9-10 stay unseen
    answer = tok.decode([int(t) for t in first["labels"] if t >= 0], skip_special_tokens=True)
    assert answer in COLORS  # the raw short answer, not "The colour is ..."
    batch = collate_rows(train[:2], processor)
    assert batch["pixel_values"].shape[0] == 2 and batch["input_ids"].shape[0] == 2
    val = plan.val_index
    assert val.ids == tuple(sorted(select_ids(data_dir, "validation", ["vqa-v2"], 4, 0)["vqa-v2"])) and val.total == 4


def load_pool_first_8(task: str) -> list[str]:
    from ying.data.instructions import load_pool

    return load_pool(task)[:8]


def test_two_worker_deepspeed_step_trains_only_what_the_stage_allows(ray_cluster, data_dir, tmp_path):
    cfg = load_config("tiny", overrides=["train.num_workers=2", "train.zero_stage=2"])
    tok = build_tokenizer(cfg.model.tokenizer)
    init = str(tmp_path / "init")
    save_checkpoint(build_model(cfg.model, tok, seed=0), tok, cfg.model, init)

    out = str(tmp_path / "out")
    # A paper-style Stage II policy: Q-Former, projection and the LLM's q/v projections only; and a
    # global batch of 8 from micro-batches of 2 on 2 workers with 2 accumulation steps.
    trainable = ["qformer.*", "query_tokens", "language_projection.*",
                 "language_model.model.layers.*.self_attn.q_proj.*", "language_model.model.layers.*.self_attn.v_proj.*"]
    plan = stage_plan(cfg, "stage2", data_dir, out, init_checkpoint=init, trainable=trainable, max_steps=4,
                      warmup_steps=1, batch_size=8, micro_batch_size=2, log_every=2, lr=1e-3, val_examples=8)
    from ray.util.state import list_actors

    def preemption_watchers() -> int:  # dead ones included: the fit ends its actors
        return len(list_actors(filters=[("class_name", "=", "PreemptionWatcher")], limit=10_000))

    watchers = preemption_watchers()
    summary = fit(cfg, plan, str(tmp_path / "ray"))

    assert summary["step"] == 4 and math.isfinite(summary["val_loss"]) and math.isfinite(summary["loss"])
    # tiny's train.preemption_watcher=false (in conftest's environment, as ying.cli puts it in a run's
    # runtime_env): one machine has no node to drain, and the watcher's process slowed every start.
    assert preemption_watchers() == watchers
    assert [h["step"] for h in summary["history"]] == [2, 4]
    before, after = load_file(f"{init}/model.safetensors"), load_file(f"{out}/model.safetensors")
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert "language_projection.weight" in changed and "language_model.model.layers.0.self_attn.q_proj.weight" in changed
    frozen = {k for k in before if k.startswith("vision_model.") or k.endswith(("k_proj.weight", "o_proj.weight"))
              or "mlp" in k and k.startswith("language_model.")}
    assert frozen and not (frozen & changed), sorted(frozen & changed)[:5]
    assert set(summary["trainable"]) >= {"language_projection.weight", "query_tokens"}
    # Where the run's time went (the manifest and the report's "start-up s"): every step of the recipe
    # timed, and the overhead is the fit's seconds less training's.
    t = summary["timings"]
    assert set(t["worker"]) >= {"imports", "deepspeed_ops", "model", "deepspeed_initialize", "restore", "train",
                                "validate", "hf_checkpoint", "resume_checkpoint", "report"}
    assert t["to_loop"] > 0 and t["after_loop"] >= 0 and t["process_to_loop"] > 0
    assert abs(t["overhead"] - (t["fit"] - t["worker"]["train"])) < 0.01 and 0 < t["overhead"] < t["fit"]
    assert abs(t["worker"]["train"] - summary["train_seconds"]) < 0.5


def test_zero3_builds_partitioned_and_saves_a_whole_checkpoint(ray_cluster, data_dir, tmp_path):
    """The paper preset's path: ZeRO-3 with zero.Init, gradient checkpointing, accumulation, resume checkpoints."""
    cfg = load_config("tiny", overrides=["train.zero_stage=3", "train.zero_init=true",
                                         "train.gradient_checkpointing=true"])
    out = str(tmp_path / "out")
    plan = stage_plan(cfg, "stage1", data_dir, out, max_steps=2, warmup_steps=1, batch_size=8, micro_batch_size=2,
                      log_every=1, checkpoint_every=1, val_examples=4)
    summary = fit(cfg, plan, str(tmp_path / "ray"))
    assert summary["step"] == 2 and math.isfinite(summary["val_loss"])
    weights = load_file(f"{out}/model.safetensors")
    reference = build_model(cfg.model, build_tokenizer(cfg.model.tokenizer), seed=0)
    # Every tensor is whole (gathered from the partitions), not a rank's shard.
    assert {k: tuple(v.shape) for k, v in weights.items()} == {k: tuple(v.shape) for k, v in reference.state_dict().items()
                                                                 if k in weights}
    assert len(weights) >= len([k for k in reference.state_dict() if "rotary" not in k])


def test_every_report_reaches_ray_train_in_order(ray_cluster, data_dir, tmp_path):
    """Reports go out in Ray's report thread (training does not wait for the controller to collect
    each one): every step's metrics must still reach the controller's callbacks, once and in order,
    before the fit returns."""
    import ray.train

    from ying.train.stages import trainer_for

    log = tmp_path / "reported.jsonl"

    class Reported(ray.train.UserCallback):  # runs in the controller's process
        def after_report(self, run_context, metrics, checkpoint):
            with open(log, "a") as f:
                f.write(json.dumps(metrics[0].get("step")) + "\n")

    cfg = load_config("tiny", overrides=["train.num_workers=2"])
    plan = stage_plan(cfg, "stage1", data_dir, str(tmp_path / "out"), max_steps=6, warmup_steps=1, batch_size=4,
                      log_every=1, val_examples=0)
    result = trainer_for(cfg, plan, str(tmp_path / "ray"), "reports", callbacks=[Reported()]).fit()
    assert result.error is None and result.return_value["step"] == 6
    assert [json.loads(line) for line in log.read_text().splitlines()] == [1, 2, 3, 4, 5, 6]
