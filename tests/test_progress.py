"""The one-line progress reporter every long stage prints with."""

import io

from ying.config import execution_only_paths
from ying.progress import ProgressLine, format_duration


def test_progress_prints_done_total_rate_eta_at_most_once_per_interval():
    now = [0.0]
    out = io.StringIO()
    p = ProgressLine("unify", 100, "records", interval_s=5, stream=out, clock=lambda: now[0],
                     extra=lambda: "3 rejected")
    now[0] = 2
    p.update(10)  # inside the interval: quiet
    now[0] = 6
    p.update(20)
    now[0] = 7
    p.update(10)  # quiet again
    now[0] = 20
    p.finish()
    lines = out.getvalue().splitlines()
    assert lines == [
        "[ying] unify: 30/100 records (30.0%), 5.0/s, ETA 14s, 3 rejected",
        "[ying] unify: 40/100 records (40.0%), 2.0/s, in 20s, 3 rejected",
    ]
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_the_eta_ignores_a_slow_start():
    now = [0.0]
    out = io.StringIO()
    p = ProgressLine("eval stage2", 1000, "examples", interval_s=5, stream=out, clock=lambda: now[0])
    now[0] = 30  # 30 s of start-up before the first example
    p.update(1)
    now[0] = 40
    p.update(499)  # then 50 examples a second
    lines = out.getvalue().splitlines()
    assert lines[0] == "[ying] eval stage2: 1/1,000 examples (0.1%), 0.0/s"  # no promise from one example
    assert lines[1] == "[ying] eval stage2: 500/1,000 examples (50.0%), 12.5/s, ETA 10s"


def test_durations_read_short():
    assert [format_duration(s) for s in (0, 59.6, 75, 3725)] == ["0s", "1m00s", "1m15s", "1h02m"]


def test_execution_only_settings_are_marked_in_the_config():
    paths = execution_only_paths()
    assert {"rephrase.actors", "rephrase.batch_size", "eval.batch_size", "rephrase.progress_interval_s"} <= paths
    # What a stage computes is never execution-only.
    assert not paths & {"train.stage2.lr", "rephrase.model", "rephrase.temperature", "data.tasks"}
