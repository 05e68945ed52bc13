"""`ying stats`: the paper's Table 2 from the instruction pools, Tables 3/9 from built records,
and the qc stage / run report carrying them."""

import hashlib
import io
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ying.cli import main
from ying.data.schema import RECORD_SCHEMA
from ying.data.stats import PAPER_TABLE9, count_instruction_tokens, instance_stats, instruction_stats, write_stats
from ying.data.tasks import TASKS

# The paper's 40 tasks: the registry without the data outside Stage II's mix (LAION, LLaVA).
PAPER_TASKS = sorted(t for t, m in TASKS.items() if m.SPEC.stage2_mix)


def _png(key: str) -> bytes:
    """A small image of its own per record (QC's contamination guard blocks shared images)."""
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:3], "big")
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (h % 256, h // 256 % 256, h // 65536 % 256)).save(buf, format="PNG")
    return buf.getvalue()


def _record(task, split, n, category="captioning", lang="en"):
    return {"id": f"{task}-{split}-{n}", "task": task, "category": category, "lang": lang, "split": split,
            "images": [_png(f"{task}-{split}-{n}")], "instruction": "Describe the image.", "inputs": "", "outputs": "a red box",
            "meta": "{}"}


def write_split(data_dir, split, name, records):
    d = os.path.join(data_dir, "records", split)
    os.makedirs(d, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(records, schema=RECORD_SCHEMA), os.path.join(d, name))


@pytest.fixture
def data_dir(tmp_path):
    d = str(tmp_path / "data")
    write_split(d, "train", "a.parquet", [_record("coco", "train", i) for i in range(3)]
                + [_record("vqa-v2", "train", i, "vqa") for i in range(2)])
    write_split(d, "train", "b.parquet", [_record("coco", "train", 9)])
    write_split(d, "validation", "a.parquet", [_record("coco", "validation", 0)])
    write_split(d, "test", "a.parquet", [_record("coco-cn", "test", 0, "chinese", "zh"),
                                         _record("not-a-task", "test", 0)])
    return d


def test_table2_over_the_shipped_pools_counts_every_instruction_by_registry_category():
    s = instruction_stats()
    n = len(TASKS)  # every task has its pool: the paper's 40 and the others (LAION, LLaVA)
    assert len(PAPER_TASKS) == 40 and s["tasks"] == n and s["instructions"] == 10 * n
    expected = {}
    for module in TASKS.values():
        expected[module.SPEC.category] = expected.get(module.SPEC.category, 0) + 10
    assert s["instructions_per_category"] == expected
    assert sum(s["instructions_per_category"].values()) == 10 * n
    assert s["edit_distance_within_task"]["n"] == n * 45  # every pair inside each task
    assert s["edit_distance_across_tasks"]["n"] == 10 * n * (10 * n - 1) // 2 - n * 45
    # Hand-written pools of distinct sentences: real distances and lengths, not degenerate ones.
    assert s["tokens_per_instruction"]["mean"] > 5
    assert s["edit_distance_across_tasks"]["mean"] > s["edit_distance_within_task"]["mean"] > 10


def test_table2_values_on_a_pool_with_known_answers(tmp_path):
    pools = tmp_path / "pools"
    pools.mkdir()
    (pools / "coco.json").write_text(json.dumps(["aaaa", "aaab"]))  # en; within distance 1
    (pools / "coco-cn.json").write_text(json.dumps(["bbbb", "bbbc"]), encoding="utf-8")  # zh
    s = instruction_stats(pools)
    assert s["instructions_per_category"] == {"captioning": 2, "chinese": 2}
    assert s["edit_distance_within_task"] == {"mean": 1.0, "sd": 0.0, "n": 2}
    # across: aaaa-bbbb 4, aaaa-bbbc 4, aaab-bbbb 3, aaab-bbbc 4 (population sd)
    assert s["edit_distance_across_tasks"] == {"mean": 3.75, "sd": pytest.approx(0.75 ** 0.5 / 2), "n": 4}
    assert s["tokens_per_instruction"]["mean"] == 1.0
    assert s["per_task"]["coco-cn"]["lang"] == "zh"


def test_tokens_are_words_in_english_and_jieba_words_in_chinese_without_punctuation():
    assert count_instruction_tokens("Describe the image , briefly.", "en") == 4
    assert count_instruction_tokens("请描述这张图片。", "zh") == 4  # 请 / 描述 / 这张 / 图片
    assert count_instruction_tokens("请描述这张图片。", "en") == 1  # no spaces: one whitespace token


def test_tables_3_and_9_count_records_by_task_category_and_split(data_dir):
    s = instance_stats(data_dir)
    assert s["by_task"]["coco"] == {"category": "captioning", "train": 4, "validation": 1, "test": 0, "total": 5}
    assert s["by_task"]["vqa-v2"] == {"category": "vqa", "train": 2, "validation": 0, "test": 0, "total": 2}
    assert s["by_task"]["coco-cn"]["category"] == "chinese"
    assert s["by_task"]["not-a-task"]["category"] == "(unregistered)"
    assert s["by_category"]["captioning"] == {"train": 4, "validation": 1, "test": 0, "total": 5}
    assert s["total"] == {"train": 6, "validation": 1, "test": 2, "total": 9}
    assert list(s["by_category"])[:3] == ["captioning", "vqa", "chinese"]  # the paper's category order


def test_cli_prints_tables_and_writes_json_and_markdown(data_dir, tmp_path, capsys):
    out = str(tmp_path / "out")
    main(["stats", "--data-dir", data_dir, "--out", out])
    printed = capsys.readouterr().out
    assert "Instructions (paper Table 2)" in printed and "| captioning | coco | 4 | 1 | 0 | 5 |" in printed
    saved = json.load(open(os.path.join(out, "stats.json")))
    assert saved["instances"]["total"]["total"] == 9
    assert saved["instructions"]["instructions"] == 10 * len(TASKS)
    md = open(os.path.join(out, "stats.md"), encoding="utf-8").read()
    assert "| **total** | 6 | 1 | 2 | 9 |" in md
    assert "tokens per instruction" in md and "jieba" in md


def test_cli_names_a_missing_data_dir(tmp_path, capsys):
    main(["stats", "--data-dir", str(tmp_path / "empty")])  # no records: an honest empty table
    assert "(no records under" in capsys.readouterr().out


def test_table9_of_the_paper_sums_to_its_table3():
    """The transcribed Table 9, checked against the category totals of Table 3 (two of which the
    paper itself does not add up to; see PAPER_TABLE9)."""
    table3 = {"captioning": (679_087, 41_462, 27_499), "classification": (238_303, 100_069, 21_206),
              "vqa": (177_633, 46_314, 10_828), "kvqa": (39_981, 11_682, 5_477), "generation": (145_000, 11_315, 17_350),
              "video": (20_868, 7_542, 9_294)}
    assert set(PAPER_TABLE9) == set(PAPER_TASKS)
    for category, totals in table3.items():
        tasks = [t for t in PAPER_TASKS if TASKS[t].SPEC.category == category]
        assert tuple(sum(PAPER_TABLE9[t][i] for t in tasks) for i in range(3)) == totals, category


def test_counts_stand_beside_table9_only_for_tasks_built_from_real_releases(data_dir, tmp_path, capsys):
    result = write_stats(data_dir, data_dir, real_release_tasks=["coco"])  # vqa-v2 came from the mini-world
    assert result["stats"]["paper_table9"] == {"coco": {"train": {"run": 4, "paper": 566_747},
                                                        "validation": {"run": 1, "paper": 25_010},
                                                        "test": {"run": 0, "paper": 25_010}}}
    assert "| coco | 4 / 566,747 | 1 / 25,010 | 0 / 25,010 |" in result["markdown"]
    assert "| vqa-v2 |" not in result["markdown"].split("beside the paper's Table 9")[1]
    # `ying stats` later on the same dir compares the same tasks (recorded in releases.json)
    main(["stats", "--data-dir", data_dir, "--out", str(tmp_path / "again")])
    assert "| coco | 4 / 566,747 | 1 / 25,010 | 0 / 25,010 |" in capsys.readouterr().out
    # a dataset built from the mini-world alone is never compared
    assert "nothing to set beside Table 9" in write_stats(data_dir, str(tmp_path / "mw"), real_release_tasks=[])["markdown"]


def test_qc_stage_writes_stats_and_review_and_the_run_report_includes_them(data_dir, tmp_path, ray_cluster):
    from ying.config import load_config
    from ying.eval.run_report import write_run_report
    from ying.pipeline import run_qc
    from ying.workflow import StageContext

    cfg = load_config("tiny", overrides=[f"run.run_dir={tmp_path / 'run'}", f"data.sources.coco={tmp_path / 'coco'}",
                                         f"eval.chair_instances={tmp_path / 'coco' / 'instances_val2014.json'}"])
    qc_dir = str(tmp_path / "run" / "qc")
    ctx = StageContext(cfg=cfg, stage_dir=qc_dir, inputs={"rephrase": {"outputs": {"data_dir": data_dir}}})
    out = run_qc(ctx)
    assert out["counts"]["passed"] == 9
    for key in ("stats_json", "stats_md", "review_html"):
        assert os.path.exists(out[key]) and os.path.dirname(out[key]) == qc_dir
    assert json.load(open(out["stats_json"]))["instances"]["total"]["train"] == 6
    report = write_run_report(cfg, {"qc": {"outputs": out}}, {}, str(tmp_path / "run" / "eval"))
    text = open(report, encoding="utf-8").read()
    assert "## Dataset statistics (paper Tables 2, 3, 9)" in text
    assert "| captioning | coco | 4 | 1 | 0 | 5 |" in text
    assert "review.html" in text
    assert "| coco | 4 / 566,747 | 1 / 25,010 | 0 / 25,010 |" in text  # coco came from a real release
