"""The ablations' design and reporting: trial grids, the scaled task counts, results tables, plots and
the Reproduction verdicts (plain functions; the Tune runs are in test_ablations_run.py)."""

from pathlib import Path

import pytest

from ying.config import AblationGrid, load_config
from ying.tune.ablations import UNSEEN_FROM, shuffled_tasks, task_counts, trial_specs
from ying.tune.results import ablation_tables, plot_figure, reproduction_rows, reproduction_table, summarize_points

TASKS = ["coco", "vqa-v2", "coco-goi", "okvqa", "clevr", "visual-dialog"]


def test_task_counts_scale_the_papers_grid_to_the_run():
    assert task_counts(AblationGrid(task_counts="paper"), 27) == [0, 4, 8, 16, 27]  # the paper's own
    assert task_counts(AblationGrid(task_counts="paper"), 6) == [0, 1, 2, 4, 6]
    assert task_counts(AblationGrid(task_counts=[0, 2, "all"]), 6) == [0, 2, 6]
    assert task_counts(AblationGrid(task_counts=[0, 8]), 6) == [0, 6]  # never more than the run has


def test_trial_specs_vary_only_the_searched_value_and_the_seed():
    cfg = load_config("tiny")
    grid = AblationGrid(instructions_per_task=[1, 4, 10], task_counts=[0, 2, "all"], seeds=[0, 1])
    specs = trial_specs(cfg, grid, TASKS)
    assert [s["value"] for s in specs["figure9"] if s["seed"] == 0] == [1, 4, 10]
    assert all(s["tasks"] == TASKS for s in specs["figure9"] + specs["answers"])
    fig10 = [s for s in specs["figure10"] if s["seed"] == 1]
    assert [s["value"] for s in fig10] == [0, 2, "all"] and fig10[0]["tasks"] == []
    # Nested subsets of one seeded shuffle: the 2 tasks are the first 2 of the 6.
    assert fig10[1]["tasks"] == shuffled_tasks(TASKS, 1)[:2] and sorted(fig10[2]["tasks"]) == sorted(TASKS)
    assert shuffled_tasks(TASKS, 0) != shuffled_tasks(TASKS, 1)
    assert [s["policy"] for s in specs["answers"] if s["seed"] == 0] == [{"answers": "outputs"},
                                                                         {"answers": "original"}]
    assert UNSEEN_FROM == 8 and max(grid.instructions_per_task[:-1]) <= UNSEEN_FROM


def _results():
    return {
        "figure9": {"metric": "m9", "points": [{"value": 1, "seed": 0, "score": 10.0}, {"value": 1, "seed": 1, "score": 12.0},
                                               {"value": 4, "seed": 0, "score": 20.0}, {"value": 10, "seed": 0, "score": 21.0}]},
        "figure10": {"metric": "m10", "points": [{"value": 0, "seed": 0, "score": 5.0, "per_task": {"msrvtt-qa": 5.0}},
                                                 {"value": 2, "seed": 0, "score": 8.0, "per_task": {"msrvtt-qa": 8.0}},
                                                 {"value": "all", "seed": 0, "score": 15.0,
                                                  "per_task": {"msrvtt-qa": 15.0}}]},
        "answers": {"metric": "ma", "points": [{"value": "rephrased", "seed": 0, "score": 40.0, "answer_words": 9.5},
                                               {"value": "raw", "seed": 0, "score": 20.0, "answer_words": 1.2}]},
    }


def test_points_summarise_over_seeds_in_value_order():
    summary = summarize_points(_results()["figure9"]["points"])
    assert [s["value"] for s in summary] == [1, 4, 10]
    assert summary[0]["mean"] == 11.0 and summary[0]["std"] == pytest.approx(1.414, abs=1e-3) and summary[0]["seeds"] == 2
    assert [s["value"] for s in summarize_points(_results()["figure10"]["points"])] == [0, 2, "all"]


def test_tables_and_plots(tmp_path):
    results = _results()
    path = plot_figure(results["figure10"], str(tmp_path / "figure10.png"), "Figure 10", "training tasks", per_task=True)
    assert Path(path).read_bytes()[:4] == b"\x89PNG"
    text = ablation_tables(results)
    assert "| 1 | 11.0 ± 1.4 | 2 |" in text and "| all | 15.0 | 1 |" in text  # one seed: no spread
    assert "| rephrased | 40.0 | 1 | 9.5 |" in text


def test_reproduction_verdicts_follow_the_numbers():
    scores = {"stage1": {"msrvtt-qa": {"rouge_l": 0.004}, "flickr8k-cn": {"rouge_l": 0.0}},
              "stage2": {"msrvtt-qa": {"rouge_l": 0.197}, "flickr8k-cn": {"rouge_l": 0.0}}}
    rows = reproduction_rows(scores, ["flickr8k-cn", "msrvtt-qa"], ["flickr8k-cn"], ["msrvtt-qa"],
                             {"coco": {"seen": 65.2, "unseen": 36.2}, "vqa-v2": {"seen": 50.0, "unseen": 49.0}},
                             _results())
    verdict = {r["claim"]: r["verdict"] for r in rows}
    assert verdict["Stage II beats Stage I on held-out tasks"] == "holds"
    assert verdict["zero-shot Chinese improves after English image-only instruction tuning"] == "does not hold"
    assert verdict["zero-shot video improves after image-only instruction tuning"] == "holds"
    assert verdict["rephrased answers give longer answers"] == "holds"
    assert verdict["more instructions per task help up to about 4, then flatten"] == "holds"  # +9 then +1
    assert verdict["more training tasks help"] == "holds"
    assert verdict["unseen instructions cost little"] == "does not hold"  # a 15-point drop of 57.6
    table = reproduction_table(rows)
    assert table.count("\n") == len(rows) + 1 and "| Figure 9 |" in table
    # Missing experiments are reported as such, never as a verdict.
    rows = reproduction_rows(scores, ["msrvtt-qa"], [], ["msrvtt-qa"], {}, None)
    assert {r["verdict"] for r in rows if r["claim"] != "Stage II beats Stage I on held-out tasks"
            and "video" not in r["claim"]} == {"not measured"}
