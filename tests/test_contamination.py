"""The held-out policy and the contamination guard, as the QC stage applies them."""

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ying.data.records import read_records
from ying.data.contamination import CONTAMINATION_KINDS, ContaminationGuard, image_identities
from ying.data.qc import check_records
from ying.data.schema import RECORD_SCHEMA


def png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, "PNG")
    return buf.getvalue()


def rec(task, split, n, image, **meta) -> dict:
    return {"id": f"{task}-{split}-{n}", "task": task, "category": "vqa", "lang": "en", "split": split,
            "images": [image], "instruction": "Answer.", "inputs": "q", "outputs": "a",
            "meta": json.dumps(meta)}


def write_split(root, split, rows):
    d = root / "records" / split
    d.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA), d / "part-0.parquet")


def test_identities_use_the_coco_id_where_the_source_is_coco():
    img = png((1, 2, 3))
    assert "coco:42" in image_identities(rec("vqa-v2", "validation", 1, img, image_id=42))
    assert "coco:42" in image_identities(rec("coco", "train", 1, img, cocoid=42))
    assert "coco:290008" in image_identities(rec("coco-cn", "test", 1, img, image_id="COCO_val2014_000000290008"))
    assert "coco:159102" in image_identities(
        rec("st-vqa", "train", 1, img, file_path="coco-text/COCO_train2014_000000159102.jpg"))
    # VisDial's val/test photos are numbered apart from COCO; GQA's ids are Visual Genome's.
    assert not any(i.startswith("coco:") for i in image_identities(rec("visual-dialog", "validation", 1, img, image_id=42)))
    assert not any(i.startswith("coco:") for i in image_identities(rec("gqa", "train", 1, img, image_id="42")))
    assert "coco:42" in image_identities(rec("visual-dialog", "train", 1, img, image_id=42))
    # Every record also has its bytes' hash, whatever its source.
    assert sum(i.startswith("sha256:") for i in image_identities(rec("gqa", "train", 1, img))) == 1


def test_guard_reports_the_coco_id_and_who_evaluates_on_it():
    guard = ContaminationGuard()
    guard.add_evaluation(rec("okvqa", "validation", 1, png((9, 9, 9)), image_id=7))
    # Same COCO picture with a red box drawn (new bytes): still found by id.
    assert guard.find(rec("coco-goi", "train", 1, png((200, 0, 0)), image_id=7)) == ("coco:7", "okvqa/validation")
    assert guard.find(rec("coco-goi", "train", 2, png((200, 0, 0)), image_id=8)) is None


@pytest.fixture
def qc_run(tmp_path):
    shared_coco, shared_bytes = png((10, 10, 10)), png((20, 20, 20))
    src = tmp_path / "in"
    write_split(src, "test", [rec("viquae", "test", 1, png((30, 30, 30)))])
    write_split(src, "train", [
        # COCO Karpathy "restval" image 101: VQA v2 evaluates on it (other bytes: found by id)
        rec("coco", "train", 1, png((11, 11, 11)), cocoid=101, karpathy_split="restval"),
        # a VisDial v1.0 training dialog on that COCO val2014 picture
        rec("visual-dialog", "train", 2, png((13, 13, 13)), image_id=101, image_file="val2014/COCO_val2014_000000000101.jpg"),
        # a COCO-GOI training box on it (new bytes, same picture)
        rec("coco-goi", "train", 1, png((14, 14, 14)), image_id=101),
        rec("coco", "train", 2, png((12, 12, 12)), cocoid=102),
        # byte-identical to a CLEVR validation image, no COCO id: found by hash
        rec("nlvr", "train", 1, shared_bytes),
        # eval-only task: set aside, and its image blocked from other tasks' training
        rec("viquae", "train", 1, png((40, 40, 40))),
        rec("okvqa", "train", 1, png((40, 40, 40)), image_id=555),
        # same number as a COCO id, but a VisDial val photo: not the same picture
        rec("visual-dialog", "train", 1, png((50, 50, 50)), image_id=777),
    ])
    write_split(src, "validation", [
        rec("vqa-v2", "validation", 1, shared_coco, image_id=101),
        rec("clevr", "validation", 1, shared_bytes),
        rec("visual-dialog", "validation", 1, png((60, 60, 60)), image_id=102),
    ])
    out = tmp_path / "out"
    counts = check_records(str(src), str(out), eval_only=["viquae"], use_ray=False)
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    return counts, {r["id"]: r["reason"] for r in rejects}, out


def test_training_records_on_evaluation_images_are_blocked_with_the_reason_and_its_kind(qc_run):
    counts, reasons, out = qc_run
    assert reasons["coco-train-1"] == "contamination (karpathy-restval): image coco:101 is used by vqa-v2/validation evaluation"
    assert reasons["visual-dialog-train-2"] == ("contamination (visdial-val2014): image coco:101 is used by "
                                                 "vqa-v2/validation evaluation")
    assert reasons["coco-goi-train-1"] == "contamination (shared-coco-image): image coco:101 is used by vqa-v2/validation evaluation"
    assert reasons["nlvr-train-1"].startswith("contamination (same-image-bytes): image sha256:")
    assert reasons["nlvr-train-1"].endswith("is used by clevr/validation evaluation")
    assert reasons["okvqa-train-1"].startswith("contamination (eval-only-image): ")
    assert reasons["okvqa-train-1"].endswith("is used by viquae/train evaluation")
    assert "evaluation-only" in reasons["viquae-train-1"] and "data.eval_only" in reasons["viquae-train-1"]
    kept = sorted(r["id"] for r in read_records(str(out), "train"))
    # coco 102 is a VisDial *val* photo's number, not a COCO image: kept
    assert kept == ["coco-train-2", "visual-dialog-train-1"]
    assert counts["contamination_blocked"] == {"coco": 1, "coco-goi": 1, "nlvr": 1, "okvqa": 1, "visual-dialog": 1}
    assert counts["eval_only_removed"] == {"viquae": 1}
    # removals reported by kind, and listed one by one
    assert counts["contamination_by_kind"] == {k: {"dropped": 1, "kept": 0} for k in CONTAMINATION_KINDS}
    listed = [json.loads(line) for line in (out / "contamination.jsonl").read_text().splitlines()]
    assert sorted((r["id"], r["kind"], r["action"]) for r in listed) == sorted([
        ("coco-train-1", "karpathy-restval", "dropped"), ("visual-dialog-train-2", "visdial-val2014", "dropped"),
        ("coco-goi-train-1", "shared-coco-image", "dropped"), ("nlvr-train-1", "same-image-bytes", "dropped"),
        ("okvqa-train-1", "eval-only-image", "dropped")])


def test_evaluation_splits_are_never_touched_and_counts_reconcile(qc_run):
    counts, _, out = qc_run
    assert sorted(r["id"] for r in read_records(str(out), "validation")) == [
        "clevr-validation-1", "visual-dialog-validation-1", "vqa-v2-validation-1"]
    assert [r["id"] for r in read_records(str(out), "test")] == ["viquae-test-1"]
    for split, c in counts["splits"].items():
        assert c["checked"] == c["passed"] + c["rejected"], split
    for task, by_split in counts["tasks"].items():
        for split, c in by_split.items():
            assert c["checked"] == c["passed"] + c["rejected"] == c["passed"] + c["invalid"] + c["eval_only"] + c["contamination"]
    assert (counts["checked"], counts["passed"], counts["rejected"]) == (12, 6, 6)
    assert json.loads((out / "qc_counts.json").read_text())["contamination_blocked"] == counts["contamination_blocked"]


def test_the_guard_can_be_switched_to_report_or_off_and_kinds_allowed(tmp_path):
    src = tmp_path / "in"
    img = png((1, 1, 1))
    write_split(src, "validation", [rec("vqa-v2", "validation", 1, img, image_id=5)])
    write_split(src, "train", [rec("coco", "train", 1, png((2, 2, 2)), cocoid=5, karpathy_split="restval"),
                               rec("coco-goi", "train", 1, png((3, 3, 3)), image_id=5)])

    def run(name, **kw):
        counts = check_records(str(src), str(tmp_path / name), use_ray=False, **kw)
        kept = sorted(r["id"] for r in read_records(str(tmp_path / name), "train"))
        listed = [json.loads(line) for line in (tmp_path / name / "contamination.jsonl").read_text().splitlines()]
        return counts, kept, {r["id"]: r["action"] for r in listed}

    counts, kept, listed = run("drop")
    assert counts["contamination_guard"] == "drop" and kept == []
    assert counts["contamination_blocked"] == {"coco": 1, "coco-goi": 1}
    counts, kept, listed = run("allow", allow=["karpathy-restval"])  # the paper's Table 9 trains on restval
    assert kept == ["coco-train-1"] and listed == {"coco-train-1": "kept", "coco-goi-train-1": "dropped"}
    assert counts["contamination_by_kind"] == {"karpathy-restval": {"dropped": 0, "kept": 1},
                                               "shared-coco-image": {"dropped": 1, "kept": 0}}
    assert counts["tasks"]["coco"]["train"]["contamination_kept"] == 1 and counts["tasks"]["coco"]["train"]["passed"] == 1
    counts, kept, listed = run("report", guard_mode="report")  # nothing removed, everything listed
    assert kept == ["coco-goi-train-1", "coco-train-1"] and set(listed.values()) == {"kept"}
    assert counts["contamination_blocked"] == {} and counts["passed"] == 3
    counts, kept, listed = run("off", guard_mode="off")
    assert kept == ["coco-goi-train-1", "coco-train-1"] and listed == {} and counts["contamination_by_kind"] == {}
    with pytest.raises(ValueError, match="unknown; known kinds"):
        check_records(str(src), str(tmp_path / "x"), allow=["restval"], use_ray=False)


def test_the_config_knobs_name_the_guards_kinds():
    import typing

    from ying.config import DataConfig, load_config

    allowed = typing.get_args(typing.get_args(DataConfig.model_fields["contamination_allow"].annotation)[0])
    assert allowed == CONTAMINATION_KINDS
    cfg = load_config("tiny", overrides=["data.contamination_allow=[karpathy-restval]"])
    assert (cfg.data.contamination_guard, cfg.data.contamination_allow) == ("drop", ["karpathy-restval"])
    assert load_config("tiny", overrides=["data.contamination_guard=report"]).data.contamination_guard == "report"
    from ying.config import ConfigError

    with pytest.raises(ConfigError, match="contamination_allow"):
        load_config("tiny", overrides=["data.contamination_allow=[restval]"])
    with pytest.raises(ConfigError, match="set data.contamination_guard=drop or data.contamination_allow=\\[\\]"):
        load_config("tiny", overrides=["data.contamination_guard=off", "data.contamination_allow=[karpathy-restval]"])


def test_the_default_miniworld_has_a_shared_image_and_qc_blocks_it(ray_cluster, tmp_path):
    """VisDial trains on COCO val2014 images OK-VQA evaluates on: the built records must be blocked."""
    from ying.config import MiniWorldConfig, load_config
    from ying.data.build import build_unified
    from ying.data.miniworld import generate_miniworld

    cfg = load_config("tiny", overrides=["data.tasks=[okvqa,visual-dialog]", "data.held_out=[]"])
    mw = MiniWorldConfig(n_images={"okvqa/train": 3, "okvqa/validation": 3, "visual-dialog/train": 20,
                                   "visual-dialog/validation": 2})
    roots = generate_miniworld(str(tmp_path / "src"), mw, seed=0, tasks=["okvqa", "visual-dialog"])
    build_unified(cfg, roots, str(tmp_path / "unified"))
    counts = check_records(str(tmp_path / "unified"), str(tmp_path / "qc"))
    # 20 dialogs, one in ten on a pool image: 2 dialogs x 2 rounds
    assert counts["contamination_blocked"] == {"visual-dialog": 4}
    assert counts["contamination_by_kind"] == {"visdial-val2014": {"dropped": 4, "kept": 0}}
    reasons = [json.loads(line)["reason"] for line in (tmp_path / "qc" / "rejects.jsonl").read_text().splitlines()]
    assert sorted(set(reasons)) == [
        "contamination (visdial-val2014): image coco:900001 is used by okvqa/validation evaluation",
        "contamination (visdial-val2014): image coco:900002 is used by okvqa/validation evaluation",
    ]
    # One decode per image: the build decoded every image and said so; QC only hashed them.
    images = sum(len(r["images"]) for s in ("train", "validation") for r in read_records(str(tmp_path / "unified"), s))
    assert (counts["images_decoded"], counts["images_spared"]) == (0, images)
    # The checks ran in Ray Data actors that hold a CPU each (never in the caller).
    from ray.util.state import list_actors

    workers = [a for a in list_actors(address=ray_cluster.dashboard_url, detail=True, limit=10_000)
               if "_QcWorker" in a["class_name"]]
    assert workers and all(a["required_resources"].get("CPU") == 1.0 for a in workers)
    train = read_records(str(tmp_path / "qc"), "train", ["visual-dialog"])
    assert len(train) == 36 and all(json.loads(r["meta"])["image_id"] < 900_001 for r in train)


def test_paper_preset_holds_out_chinese_and_video_and_keeps_viquae_winoground_for_evaluation():
    from ying.config import load_config
    from ying.data.tasks import TASKS, get_task
    from ying.train.stages import stage_tasks

    cfg = load_config("paper")
    assert sorted(t for t in cfg.data.tasks if get_task(t).SPEC.stage2_mix) == sorted(
        t for t, m in TASKS.items() if m.SPEC.stage2_mix)  # Table 9: all 40
    assert "laion" in cfg.data.tasks and cfg.train.stage1.tasks == ["coco", "laion"]  # §3.1.1's Stage I data
    by_category = {t: get_task(t).SPEC.category for t in cfg.data.tasks}
    assert sorted(cfg.data.held_out) == sorted(t for t, c in by_category.items() if c in ("chinese", "video"))
    assert cfg.data.eval_only == ["viquae", "winoground"]
    trained = stage_tasks(cfg, "stage2")
    assert len(trained) == 40 - 11 - 2
    assert not {by_category[t] for t in trained} & {"chinese", "video"}
    assert "viquae" not in trained and "winoground" not in trained
    # every choice is config: a user may train on Chinese and evaluate only on ViQuAE
    cfg = load_config("paper", overrides=["data.held_out=[]", "data.eval_only=[viquae]"])
    assert "coco-cn" in stage_tasks(cfg, "stage2") and "winoground" in stage_tasks(cfg, "stage2")
