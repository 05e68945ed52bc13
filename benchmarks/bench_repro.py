"""Does the same config give the same weights and the same verdicts? Runs the README's command as a
user does and compares the bytes, side by side in one run.

    python benchmarks/bench_repro.py --workdir /tmp/bench_repro              # Stage I x3: ~15 min on 2 cores
    python benchmarks/bench_repro.py --workdir /tmp/bench_repro --verdicts runs/default /tmp/other
    python benchmarks/bench_repro.py --workdir /tmp/bench_repro --dag-runs 2 # + two whole default DAGs

Stage I (``workflows/full.py --until stage1`` with ``--set train.stage1.max_steps=120
--set train.stage1.warmup_steps=4 --set train.stage1.checkpoint_every=10``), in three run dirs:
  a, b   two clean runs;
  c      killed (SIGKILL to the driver's process group) as soon as its step-50 checkpoint is
         complete, then the same command again, which must say it resumed.
``identical_same_config``: a's and b's ``stage1/hf/model.safetensors`` are equal bytes (1/0);
``identical_after_kill_resume``: c's equal a's and the re-run said "resumed at step" (1/0).
``verdicts_changed_between_two_runs``: Reproduction rows whose verdict differs between two default
runs (``--verdicts A B``: two finished run dirs; ``--dag-runs 2``: this benchmark runs them). The
last line is JSON; a figure that was not measured is left out, and ``not_measured`` says which.
Goals: 1, 1, 0. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STAGE1 = ["--until", "stage1", "--set", "train.stage1.max_steps=120", "--set", "train.stage1.warmup_steps=4",
          "--set", "train.stage1.checkpoint_every=10"]


def _cmd(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "workflows" / "full.py"), "--run-dir", str(run_dir), *extra]


def run(run_dir: Path, *extra: str) -> tuple[str, float]:
    t0 = time.time()
    proc = subprocess.run(_cmd(run_dir, *extra), cwd=REPO, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    if proc.returncode:
        raise SystemExit(f"[bench] {run_dir}: exit {proc.returncode}\n{out[-3000:]}")
    return out, time.time() - t0


def run_killed_after(run_dir: Path, step: int, *extra: str) -> float:
    """Start the command, SIGKILL its process group once the stage1 checkpoint of ``step`` is complete."""
    t0 = time.time()
    proc = subprocess.Popen(_cmd(run_dir, *extra), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    marker = f"stage1-*/resume/step_{step:08d}/COMPLETE.json"
    try:
        while not list((run_dir / "stage1" / "ray_train").glob(marker)):
            if proc.poll() is not None:
                raise SystemExit(f"[bench] {run_dir}: the run ended (exit {proc.returncode}) before its step-{step} "
                                 "checkpoint")
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return time.time() - t0


def weights(run_dir: Path) -> bytes:
    return (run_dir / "stage1" / "hf" / "model.safetensors").read_bytes()


def verdicts(run_dir: Path) -> dict[str, str]:
    manifest = json.loads((run_dir / "report" / "_manifest.json").read_text())
    return {row["claim"]: row["verdict"] for row in manifest["outputs"]["reproduction"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="run dirs go here (emptied first)")
    p.add_argument("--kill-at", type=int, default=50, help="kill run c once this step's checkpoint is complete")
    p.add_argument("--verdicts", nargs=2, metavar=("RUN_A", "RUN_B"), help="two finished default run dirs")
    p.add_argument("--dag-runs", type=int, choices=(0, 2), default=0, help="2: also run two default DAGs")
    p.add_argument("--skip-stage1", action="store_true", help="only the verdict comparison")
    args = p.parse_args()
    work = Path(args.workdir)
    result: dict = {}
    not_measured = []

    if not args.skip_stage1:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        a, b, c = work / "a", work / "b", work / "c"
        _, ta = run(a, *STAGE1)
        print(f"[bench] a: clean run, {ta:.0f}s", flush=True)
        _, tb = run(b, *STAGE1)
        print(f"[bench] b: clean run in another dir, {tb:.0f}s", flush=True)
        tk = run_killed_after(c, args.kill_at, *STAGE1)
        print(f"[bench] c: killed after its step-{args.kill_at} checkpoint, {tk:.0f}s in", flush=True)
        out, tc = run(c, *STAGE1)
        resumed = [line for line in out.splitlines() if "resumed at step" in line]
        print(f"[bench] c: re-run, {tc:.0f}s: {resumed[0].strip() if resumed else 'did NOT say it resumed'}",
              flush=True)
        result["identical_same_config"] = int(weights(a) == weights(b))
        result["identical_after_kill_resume"] = int(bool(resumed) and weights(c) == weights(a))
        result["seconds"] = {"a": round(ta), "b": round(tb), "c_until_kill": round(tk), "c_rerun": round(tc)}

    runs = [Path(r) for r in args.verdicts] if args.verdicts else []
    if args.dag_runs == 2:
        runs = [work / "dag-1", work / "dag-2"]
        for r in runs:
            _, t = run(r)
            print(f"[bench] {r}: the default DAG, {t:.0f}s", flush=True)
    if runs:
        first, second = verdicts(runs[0]), verdicts(runs[1])
        changed = sorted(c for c in first.keys() | second.keys() if first.get(c) != second.get(c))
        for claim in sorted(first.keys() | second.keys()):
            mark = "CHANGED" if claim in changed else "same"
            print(f"[bench] {claim}: {first.get(claim)} / {second.get(claim)} ({mark})", flush=True)
        result["verdicts_changed_between_two_runs"] = len(changed)
        result["verdict_runs"] = [str(r) for r in runs]
    else:
        not_measured.append("verdicts_changed_between_two_runs (give --verdicts A B or --dag-runs 2)")
    if not_measured:
        result["not_measured"] = not_measured
    print(json.dumps(result))


if __name__ == "__main__":
    main()
