"""The learning-rate search: where it says the next search should look, and whether ASHA can stop a trial.

The edge verdict and the ASHA rungs are pure functions (no Ray cluster). The scheduler itself is
driven in-process with Ray's own ASHAScheduler, as Tune would feed it results, to show why the
tiny preset's old settings stopped nothing and its new ones do; one test then runs a real search.
"""

from types import SimpleNamespace

import pytest

from ying.config import load_config
from ying.tune.lr_search import asha_rungs, edge_note, grid_edge, middle_out, range_edge, trial_reports


def test_a_best_lr_at_the_top_of_the_grid_suggests_going_up_by_the_grids_own_step():
    edge, suggested = grid_edge([2e-4, 5e-4, 1e-3], 1e-3)
    # The mean log step of {2e-4, 5e-4, 1e-3} is sqrt(5): two steps above 1e-3, with 5e-4 kept so the
    # next search can bracket the optimum instead of landing on its lower edge.
    assert edge == "upper" and suggested == [5e-4, 1e-3, 2.2e-3, 5e-3]


def test_a_best_lr_at_the_bottom_of_the_grid_suggests_going_down():
    edge, suggested = grid_edge([1e-3, 2e-4, 5e-4], 2e-4)  # any order
    assert edge == "lower" and suggested == [4e-5, 8.9e-5, 2e-4, 5e-4]


def test_an_inner_best_lr_or_a_single_value_grid_is_no_edge():
    assert grid_edge([2e-4, 5e-4, 1e-3], 5e-4) == (None, None)
    assert grid_edge([1e-3], 1e-3) == (None, None)


def test_an_lr_range_edge_is_the_outer_tenth_of_its_log_width():
    # [1e-5, 1e-3] spans two decades: the outer 10% are below 1.58e-5 and above 6.3e-4.
    assert range_edge(1e-5, 1e-3, 1.5e-5) == ("lower", [1.5e-6, 1.5e-4])
    assert range_edge(1e-5, 1e-3, 9e-4) == ("upper", [9e-5, 9e-3])
    assert range_edge(1e-5, 1e-3, 1.7e-5) == (None, None)
    assert range_edge(1e-5, 1e-3, 6e-4) == (None, None)


def test_the_warning_names_the_override_to_pass_and_that_override_is_a_valid_config():
    note = edge_note([2e-4, 5e-4, 1e-3], None, 1e-3)
    assert note["edge"] == "upper" and note["suggested_lrs"] == [5e-4, 1e-3, 2.2e-3, 5e-3]
    warning = note["edge_warning"]
    assert "\n" not in warning and "largest" in warning and "above" in warning
    override = warning.split("--set ")[1].strip("'")
    assert override == "tune.lrs=[5e-4, 1e-3, 2.2e-3, 5e-3]"
    assert load_config("tiny", overrides=[override]).tune.lrs == [5e-4, 1e-3, 2.2e-3, 5e-3]

    ranged = edge_note([2e-4], (1e-5, 1e-3), 1.2e-5)
    assert ranged["edge"] == "lower" and ranged["suggested_lr_range"] == [1.2e-6, 1.2e-4]
    override = ranged["edge_warning"].split("--set ")[1].strip("'")
    assert load_config("tiny", overrides=[override]).tune.lr_range == (1.2e-6, 1.2e-4)

    assert edge_note([2e-4, 5e-4, 1e-3], None, 5e-4) == {"edge": None, "suggested_lrs": None, "edge_warning": None}


def test_a_grid_runs_middle_first():
    # Then outwards, the larger before the smaller: the smallest lr runs last.
    assert middle_out([2e-4, 5e-4, 1e-3]) == [5e-4, 1e-3, 2e-4]
    assert middle_out([4, 1, 3, 2, 2]) == [3, 2, 4, 1]
    assert middle_out([5e-6, 1e-5, 2e-5, 4e-5, 8e-5]) == [2e-5, 4e-5, 1e-5, 8e-5, 5e-6]


def test_a_trial_reports_every_report_every_steps_and_at_its_last_step():
    assert trial_reports(45, 15) == 3
    assert trial_reports(45, 20) == 3  # steps 20, 40 and 45: ASHA must not end it at step 40
    assert trial_reports(3, 10) == 1


@pytest.mark.parametrize("reports,grace,rf", [(3, 2, 2), (3, 1, 2), (2, 2, 2), (2, 1, 2), (8, 2, 2), (9, 1, 3),
                                              (16, 1, 2), (5, 9, 2)])
def test_asha_rungs_are_rays_rungs_below_max_t(reports, grace, rf):
    from ray.tune.schedulers.async_hyperband import _Bracket

    ray_rungs = sorted(m for m, _ in _Bracket(min(grace, reports), reports, rf, 0)._rungs if m < reports)
    assert asha_rungs(reports, grace, rf) == ray_rungs


def _sequence(cfg, order, losses, concurrent=False):
    """Feed Ray's ASHAScheduler the results of a search as Tune would (each trial reports its loss at
    every report) and return the lrs it stopped before their last report. ``concurrent``: the first
    two trials run together, reporting in turn at every report (the first listed arriving first),
    and the rest one after the other once they are done; else every trial runs alone, in order."""
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.schedulers.trial_scheduler import TrialScheduler

    t = cfg.tune
    reports = t.trial_steps // t.report_every
    scheduler = ASHAScheduler(time_attr="training_iteration", metric="val_loss", mode="min", max_t=reports,
                              grace_period=min(t.grace_period, reports), reduction_factor=t.reduction_factor)
    trials = {lr: SimpleNamespace(trial_id=str(lr)) for lr in order}
    for trial in trials.values():
        scheduler.on_trial_add(None, trial)
    stopped = []
    for lane in ([order[:2]] + [[lr] for lr in order[2:]]) if concurrent else [[lr] for lr in order]:
        running = list(lane)
        for it in range(1, reports + 1):
            for lr in list(running):
                action = scheduler.on_trial_result(None, trials[lr], {"training_iteration": it,
                                                                     "val_loss": losses[lr][it - 1]})
                if action == TrialScheduler.STOP:
                    running.remove(lr)
                    stopped += [lr] if it < reports else []
    return stopped


# The tiny preset's search as measured (synthetic records; val_loss at steps 15, 30, 45): loss falls with lr.
LOSSES = {2e-4: [5.47, 4.94, 4.85], 5e-4: [4.79, 4.07, 3.92], 1e-3: [4.07, 2.71, 2.46]}
RISING = {2e-4: LOSSES[1e-3], 5e-4: LOSSES[5e-4], 1e-3: LOSSES[2e-4]}
VALLEY = {2e-4: [5.0, 4.8, 4.7], 5e-4: [4.0, 3.5, 3.3], 1e-3: [4.6, 4.2, 4.1]}  # the middle is best


def test_the_old_tiny_settings_let_asha_stop_nothing():
    cfg = load_config("tiny", overrides=["tune.grace_period=2"])
    # One rung (report 2); ascending order, so 2e-4 and 5e-4 raced there and 1e-3 came last. With the
    # weakest arriving first it is never compared, and every later trial beats what came before.
    assert asha_rungs(3, 2, 2) == [2]
    assert _sequence(cfg, sorted(LOSSES), LOSSES, concurrent=True) == []


def test_the_tiny_settings_stop_the_smallest_lr_at_its_first_report():
    cfg = load_config("tiny")
    t = cfg.tune
    assert t.trial_steps * len(t.lrs) <= 45 * 3  # no longer than the search it replaces
    assert asha_rungs(t.trial_steps // t.report_every, t.grace_period, t.reduction_factor) == [1, 2]
    assert t.max_concurrent_trials == 2
    order = middle_out(t.lrs)
    assert order == [5e-4, 1e-3, 2e-4]
    # Whichever of the two concurrent trials reaches a rung first, 2e-4 comes last and meets both;
    # when 1e-3 is there first, 5e-4 is stopped too.
    assert _sequence(cfg, order, LOSSES, concurrent=True) == [2e-4]
    assert _sequence(cfg, [1e-3, 5e-4, 2e-4], LOSSES, concurrent=True) == [5e-4, 2e-4]


def test_one_trial_at_a_time_a_middle_first_grid_loses_a_trial_whatever_the_slope():
    cfg = load_config("tiny", overrides=["tune.max_concurrent_trials=1"])
    order = middle_out(cfg.tune.lrs)
    assert _sequence(cfg, order, LOSSES) == [2e-4]
    assert _sequence(cfg, order, RISING) == [1e-3]
    assert _sequence(cfg, order, VALLEY) == [1e-3, 2e-4]
@pytest.mark.parametrize("preset", ["tiny", "paper", "paper-cpu"])
def test_every_preset_leaves_asha_a_rung_before_the_last_report(preset):
    # paper-cpu wants its checkpoints' folders named; the tune section does not read them.
    paths = ["model.blip2_path=/unread/blip2", "model.llm_path=/unread/llm"] if preset == "paper-cpu" else []
    t = load_config(preset, overrides=paths).tune
    assert asha_rungs(trial_reports(t.trial_steps, t.report_every), t.grace_period, t.reduction_factor)


def test_a_real_tiny_search_stops_a_trial_and_reports_its_edge(ray_cluster, tmp_path, capsys):
    """The tiny preset's search settings (grid, rungs, concurrency), on short trials from a random init."""
    from tests.test_train import write_records
    from ying.model.checkpoint import save_checkpoint
    from ying.model.tokenizer import build_tokenizer
    from ying.model.vlm import build_model
    from ying.tune.lr_search import lr_search

    data = write_records(tmp_path / "data", {"coco": {"train": 32, "validation": 8},
                                             "vqa-v2": {"train": 32, "validation": 8}})
    # 3 reports as in the preset (rungs at reports 1 and 2), 3 steps apart instead of 15.
    cfg = load_config("tiny", overrides=["tune.trial_steps=9", "tune.report_every=3", "tune.val_examples=8"])
    tok = build_tokenizer(cfg.model.tokenizer)
    init = str(tmp_path / "init")
    save_checkpoint(build_model(cfg.model, tok, seed=0), tok, cfg.model, init)

    out = lr_search(cfg, data, init, str(tmp_path / "tune"), fingerprint="asha")
    printed = capsys.readouterr().out

    trials = {t["lr"]: t for t in out["trials"]}
    assert sorted(trials) == [2e-4, 5e-4, 1e-3] and not any(t["error"] for t in trials.values())
    stopped = [lr for lr, t in trials.items() if t["stopped_early"]]
    assert stopped, out["trials"]  # ASHA stopped at least one trial ...
    assert all(trials[lr]["step"] in (3, 6) for lr in stopped)  # ... at a rung, before its last report
    assert out["best_lr"] not in stopped and out["asha_rungs"] == [1, 2]
    assert "ASHA may stop a trial at step 3, 6 of 9" in printed
    assert f"{len(stopped)} of 3 trials stopped early by ASHA" in printed
    # The edge verdict follows the best: a warning with the next grid exactly when it is 2e-4 or 1e-3.
    expected = edge_note(cfg.tune.lrs, None, out["best_lr"])
    assert {k: out[k] for k in expected} == expected
    assert (out["edge_warning"] in printed) if out["edge"] else ("WARNING: best lr" not in printed)


def test_the_report_marks_stopped_trials_and_carries_the_edge_warning():
    from ying.eval.run_report import _tune_table

    table = _tune_table({"metric": "val_loss", "best_lr": 1e-3, "edge_warning": "best lr 1e-3 is the largest of the grid",
                         "trials": [{"lr": 2e-4, "val_loss": 2.0, "step": 15, "stopped_early": True},
                                    {"lr": 1e-3, "val_loss": 1.5, "step": 45, "stopped_early": False}]})
    assert "| 2.0e-04 | 2.0000 | 15 | stopped early by ASHA |" in table
    assert "| 1.0e-03 | 1.5000 | 45 | best |" in table
    assert table.endswith("best lr 1e-3 is the largest of the grid")


def test_the_trials_concurrency_is_part_of_what_the_search_computes():
    """With ASHA, which trials run together decides which are stopped: a change must re-run the tune stage."""
    from ying.config import TuneConfig, execution_only_paths

    assert "max_concurrent_trials" not in execution_only_paths(TuneConfig)
