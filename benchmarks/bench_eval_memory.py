"""Benchmark of the eval stage's memory (ying.eval), at 1x and 10x the records, side by side in one run.

    python benchmarks/bench_eval_memory.py                        # default sizes, ~10 minutes on 2 idle CPUs
    python benchmarks/bench_eval_memory.py --size 0.05 --factor 4  # smoke test
    python benchmarks/bench_eval_memory.py --workdir /tmp/bem --keep   # keep (and on reruns reuse) the data

It generates the tiny preset's mini-world scaled by --size (1x) and by --size x --factor (10x),
builds each into records (``build_unified_local``: Parquet, images as bytes), and saves one randomly
initialised tiny Ying checkpoint. Then, each in its own fresh process, it measures:

  eval          ``evaluate_models`` on the data dir: majority answer (the train split), every task
                and every paper suite (Figure 5's seen/unseen split reads the train split again),
                CHAIR ground truth, and the checkpoint's predictions on Ray Data actors (images read
                by the actors), with eval.max_per_task=--per-task, so both sizes ask as many
                questions. Peak RSS summed over the driver and every Ray process (all children of
                the driver on a local cluster), and the driver's alone, sampled every --sample-s.
  whole_splits  what the eval stage did before it read in bounded memory: the test, validation and
                train splits read whole, image bytes included, into the driver (``read_records``).
                The driver's peak RSS.

The last line is JSON. Goal: ``rss_ratio_10x`` (eval, driver + Ray processes, 10x over 1x) <= 1.2;
``driver_rss_ratio_10x`` is the driver's alone and ``whole_splits_rss_ratio_10x`` the old path's,
for contrast. Summed RSS counts shared pages once per process and includes the idle cluster, so the
growth above the idle cluster is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

from proc_tree import TreeSampler  # benchmarks/ is on sys.path when this file runs as a script

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local benchmark cluster needs no token

GOALS = {"rss_ratio_10x": ("<=", 1.2)}
MIB = 2**20


# ---------------------------------------------------------------- child: one measurement


def eval_config(run_dir: str, per_task: int):
    from ying.config import load_config

    return load_config("tiny", overrides=[f"run.run_dir={run_dir}", f"eval.max_per_task={per_task}",
                                          "eval.max_new_tokens=4", "eval.caption_max_new_tokens=6",
                                          "eval.batch_size=16", "eval.progress_interval_s=30"])


def run_child(mode: str, data_dir: str, ckpt: str, sources: dict, work: str, per_task: int, cpus: int,
              sample_s: float) -> dict:
    if mode == "whole_splits":
        from ying.data.records import read_records

        with TreeSampler(sample_s, cpu=False) as rss:
            idle = rss.sample()
            t0 = time.perf_counter()
            held = {split: read_records(data_dir, split) for split in ("test", "validation", "train")}
            seconds = time.perf_counter() - t0
            n = sum(len(v) for v in held.values())
        return {"mode": mode, "seconds": seconds, "records": n, "peak_tree": rss.peak,
                "peak_driver": rss.peak_root, "idle": idle}
    import ray

    from ying.eval.evaluate import evaluate_models

    for attempt in range(10):  # a loaded machine can time a new cluster's start-up out (Ray waits 30 s)
        try:
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
            break
        except Exception:
            ray.shutdown()
            if attempt == 9:
                raise
            time.sleep(30)
    ray.data.DataContext.get_current().enable_progress_bars = False
    time.sleep(1.0)  # let the cluster's agents finish starting, so "idle" is idle
    cfg = eval_config(os.path.join(work, "run"), per_task)
    with TreeSampler(sample_s, cpu=False) as rss:
        idle = rss.sample()
        t0 = time.perf_counter()
        res = evaluate_models(cfg, data_dir, {"bench": ckpt}, os.path.join(work, "eval"), sources=sources)
        seconds = time.perf_counter() - t0
    ray.shutdown()
    n_examples = sum(s["n_examples"] for s in res["suites"].values()) + res["n_records"]
    return {"mode": mode, "seconds": seconds, "examples": n_examples, "generated": res["prediction_cache"]["bench"],
            "peak_tree": rss.peak, "peak_driver": rss.peak_root, "idle": idle}


def spawn_child(mode: str, data_dir: str, ckpt: str, sources: dict, work: str, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, "--child-data", data_dir, "--child-ckpt", ckpt,
           "--child-sources", json.dumps(sources), "--child-work", work, "--per-task", str(args.per_task),
           "--cpus", str(args.cpus), "--sample-s", str(args.sample_s)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} on {data_dir} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- setup: data and checkpoint


def bench_config(size: float, image_size: int):
    from ying.config import MiniWorldConfig, load_config

    base = load_config("tiny")
    scale = lambda table: {k: max(1, math.ceil(v * size)) for k, v in table.items()}  # noqa: E731
    mw = MiniWorldConfig(image_size=image_size, n_images=scale(base.miniworld.n_images),
                         n_videos=scale(base.miniworld.n_videos), video_frames=base.miniworld.video_frames)
    return base.model_copy(update={"miniworld": mw})


def built_data(root: str, size: float, image_size: int) -> tuple[str, dict]:
    """The tiny preset's mini-world scaled by ``size``, built into records; reused when ``root`` holds it."""
    from ying.data.build import build_unified_local
    from ying.data.miniworld import generate_miniworld

    cfg = bench_config(size, image_size)
    stamp = os.path.join(root, "_bench_stamp.json")
    want = {"miniworld": cfg.miniworld.model_dump(), "tasks": cfg.data.tasks}
    data_dir, src = os.path.join(root, "data"), os.path.join(root, "sources")
    roots = {t: os.path.join(src, t) for t in cfg.data.tasks}
    if os.path.exists(stamp) and json.load(open(stamp)) == want:
        print(f"reusing {root}", flush=True)
        return data_dir, roots
    shutil.rmtree(root, ignore_errors=True)
    t = time.perf_counter()
    roots = generate_miniworld(src, cfg.miniworld, seed=0, tasks=cfg.data.tasks)
    stats = build_unified_local(cfg, roots, data_dir)
    n = sum(c["written"] for s in stats.values() for c in s.values())
    with open(stamp, "w") as f:
        json.dump(want, f)
    print(f"built {n} records in {root} in {time.perf_counter() - t:.0f}s", flush=True)
    return data_dir, roots


def dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=float, default=0.25, help="mini-world size at 1x, as a fraction of the tiny preset's")
    ap.add_argument("--factor", type=int, default=10, help="records multiplier of the comparison (default 10)")
    ap.add_argument("--image-size", type=int, default=128, help="side of the generated images in pixels")
    ap.add_argument("--per-task", type=int, default=12, help="eval.max_per_task at both sizes")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of each eval's local Ray cluster")
    ap.add_argument("--sample-s", type=float, default=0.05, help="RSS sampling period in seconds")
    ap.add_argument("--workdir", help="where data, checkpoint and outputs go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep --workdir afterwards")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-data", help=argparse.SUPPRESS)
    ap.add_argument("--child-ckpt", help=argparse.SUPPRESS)
    ap.add_argument("--child-sources", help=argparse.SUPPRESS)
    ap.add_argument("--child-work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_child(args.child, args.child_data, args.child_ckpt, json.loads(args.child_sources),
                                   args.child_work, args.per_task, args.cpus, args.sample_s)))
        return

    from ying.config import load_config
    from ying.model.checkpoint import save_checkpoint
    from ying.model.tokenizer import build_tokenizer
    from ying.model.vlm import build_model

    work = args.workdir or tempfile.mkdtemp(prefix="bench-eval-memory-")
    os.makedirs(work, exist_ok=True)
    ckpt = os.path.join(work, "ckpt")
    if not os.path.exists(os.path.join(ckpt, "config.json")):
        cfg = load_config("tiny")
        tok = build_tokenizer(cfg.model.tokenizer)
        save_checkpoint(build_model(cfg.model, tok, seed=0), tok, cfg.model, ckpt, {"stage": "bench"})
    sizes = {"1x": args.size, f"{args.factor}x": args.size * args.factor}
    data = {name: built_data(os.path.join(work, name), size, args.image_size) for name, size in sizes.items()}
    results: dict[str, dict] = {}
    for name, (data_dir, roots) in data.items():
        for mode in ("whole_splits", "eval"):
            out = os.path.join(work, f"{mode}-{name}")
            shutil.rmtree(out, ignore_errors=True)  # a fresh prediction cache: both sizes generate
            r = spawn_child(mode, data_dir, ckpt, roots, out, args)
            r["data_mib"] = dir_bytes(os.path.join(data_dir, "records")) / MIB
            results[f"{mode}-{name}"] = r
            print(f"[bench] {mode} {name}: peak RSS driver {r['peak_driver'] / MIB:.0f} MiB, "
                  f"driver + Ray {r['peak_tree'] / MIB:.0f} MiB (idle {r['idle'] / MIB:.0f}), "
                  f"{r.get('records', r.get('examples'))} {'records' if 'records' in r else 'examples'}, "
                  f"{r['seconds']:.0f}s; records on disk {r['data_mib']:.0f} MiB", flush=True)
    one, many = "1x", f"{args.factor}x"
    e1, eN = results[f"eval-{one}"], results[f"eval-{many}"]
    w1, wN = results[f"whole_splits-{one}"], results[f"whole_splits-{many}"]
    figures = {
        "rss_ratio_10x": round(eN["peak_tree"] / e1["peak_tree"], 3),
        "driver_rss_ratio_10x": round(eN["peak_driver"] / e1["peak_driver"], 3),
        "whole_splits_rss_ratio_10x": round(wN["peak_driver"] / w1["peak_driver"], 3),
    }
    grow1, growN = e1["peak_tree"] - e1["idle"], eN["peak_tree"] - eN["idle"]
    print(f"eval: driver + Ray processes {e1['peak_tree'] / MIB:.0f} -> {eN['peak_tree'] / MIB:.0f} MiB "
          f"(x{figures['rss_ratio_10x']}), above the idle cluster {grow1 / MIB:.0f} -> {growN / MIB:.0f} MiB; "
          f"driver {e1['peak_driver'] / MIB:.0f} -> {eN['peak_driver'] / MIB:.0f} MiB (x{figures['driver_rss_ratio_10x']})")
    print(f"whole splits in the driver (the old way): {w1['peak_driver'] / MIB:.0f} -> {wN['peak_driver'] / MIB:.0f} MiB "
          f"(x{figures['whole_splits_rss_ratio_10x']}) for {w1['records']} -> {wN['records']} records")
    met = {k: (v <= goal if op == "<=" else v >= goal) for k, (op, goal) in GOALS.items() for v in [figures[k]]}
    print(json.dumps({**figures, "goals_met": met,
                      "records": {one: w1["records"], many: wN["records"]},
                      "records_mib": {one: round(w1["data_mib"], 1), many: round(wN["data_mib"], 1)},
                      "eval_examples": {one: e1["examples"], many: eN["examples"]},
                      "peak_mib": {k: {"driver": round(v["peak_driver"] / MIB), "tree": round(v["peak_tree"] / MIB)}
                                   for k, v in results.items()},
                      "seconds": {k: round(v["seconds"], 1) for k, v in results.items()}}))
    if not args.keep and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
