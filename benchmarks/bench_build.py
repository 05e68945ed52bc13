"""Benchmark of the unify build (ying.data.build), side by side on the same mini-world inputs.

    python benchmarks/bench_build.py                      # default sizes: ~4 minutes on 2 idle CPUs
    python benchmarks/bench_build.py --size 0.02 --image-size 64   # smoke test, about a minute
    python benchmarks/bench_build.py --workdir /tmp/bb --keep      # keep (and on reruns reuse) the sources

It prints four figures, each measured in this one run, and ends with one JSON line holding them:

  speedup_2cpu           records/s of ``build_unified`` (Ray Data, a fresh local cluster of --cpus
                         CPUs) over records/s of ``build_unified_local`` (one plain process calling
                         the same listing, chunk and record functions), both on the 10x inputs
                         (the 1x figure is printed too). Goal >= 1.8. ``ray.init`` is outside the
                         timer; worker, Ray Data actor and import start-up are inside.
  passthrough_identical  share of built images that carry no visual prompt (no box drawn; video
                         frames excluded, they have no source image file) whose bytes are identical
                         to the source file. Goal 1.0.
  rss_ratio_10x          peak resident memory of the whole Ray build (driver + every Ray process:
                         GCS, raylet, agents, workers; all are children of the driver on a local
                         cluster), summed over processes and sampled every --sample-s, at 10x the
                         records over 1x. Goal <= 1.2. Each size runs in its own fresh process and
                         cluster. Summed RSS counts shared pages once per process and includes the
                         idle cluster, so the growth above the idle cluster is printed beside it.
  bytes_ratio_vs_jsonl   bytes of our Parquet records (the 1x build) over the bytes of the same
                         records exported by ``ying.data.m3it.export_m3it`` in M3IT's layout (the
                         split .jsonl files: instruction, inputs, outputs, image_base64_str, meta).
                         Goal <= 0.77. Base64 alone makes JSONL 4/3 the image bytes; zstd in our
                         Parquet also shares repeated bytes within a row group (an image asked
                         about several times, JPEG headers, the text), which JSONL cannot.

Two more figures, no goal, say how the QC stage checks images (Ray Data, one CPU per worker, on the
1x build): ``qc_decodes_per_image``, images QC decoded over images checked (0.0: every image was
decoded once, by the build, whose ``meta.image_sha256`` QC verifies by hashing), and
``qc_speedup_one_decode``, QC's seconds when it decodes every image again over its seconds when it
trusts the build's digests.

A check line gives the CPU seconds each build cost over its whole process tree, and the speed-up
they allow on --cpus otherwise idle CPUs: on a busy machine the wall-clock ratio says more about
the neighbours than about the build. Three more figures, no goal, say what caps ``speedup_2cpu``
(the process tree is sampled with ``proc_tree.TreeSampler``, whose CPU seconds by process kind are
printed too): ``ray_extra_cpu_s``, the CPU seconds the 10x Ray build spent beyond the one-process
build (the same functions on the same inputs, so this is Ray's own: raylet, GCS, the driver's
executor, Ray Data's actors, worker start-up); ``ray_idle_cpu_s``, --cpus x its wall seconds minus
its CPU seconds (start-up latency, the last chunk's tail); ``speedup_bound_cpu``, the speed-up the
extra CPU alone leaves on --cpus CPUs (Amdahl: local / ((local + extra) / cpus)).

Sizes: --size scales the tiny preset's mini-world (every task the mini-world can write), and
--factor is the memory comparison's multiplier. Absolute timings depend on what else runs on the
machine; run it alone for figures you report.
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

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local benchmark cluster needs no token

from ying.config import MiniWorldConfig, YingConfig, load_config  # noqa: E402
from ying.data.build import build_unified, build_unified_local, iter_listing, reads_dataset  # noqa: E402
from ying.data.records import read_records, split_dir  # noqa: E402
from ying.data.m3it import export_m3it  # noqa: E402
from ying.data.qc import check_records  # noqa: E402
from ying.data.miniworld import MINIWORLD_TASKS, generate_miniworld  # noqa: E402
from ying.data.schema import SPLITS, make_record_id  # noqa: E402
from ying.data.tasks import get_task  # noqa: E402
from proc_tree import TreeSampler  # noqa: E402  (benchmarks/ is on sys.path when this file runs as a script)

GOALS = {"speedup_2cpu": (">=", 1.8), "passthrough_identical": (">=", 1.0),
         "rss_ratio_10x": ("<=", 1.2), "bytes_ratio_vs_jsonl": ("<=", 0.77)}


def bench_config(image_size: int, size: float) -> YingConfig:
    """The tiny preset, building every listed mini-world task (laion, read as a Ray Dataset, has no
    one-process build to compare with), its mini-world scaled by ``size``."""
    base = load_config("tiny")
    tasks = [t for t in MINIWORLD_TASKS if not reads_dataset(t)]
    cfg = load_config("tiny", overrides=[f"data.tasks=[{','.join(tasks)}]", "data.held_out=[]",
                                         "data.eval_only=[]"])
    scale = lambda table: {k: max(1, math.ceil(v * size)) for k, v in table.items()}  # noqa: E731
    mw = MiniWorldConfig(image_size=image_size, n_images=scale(base.miniworld.n_images),
                         n_videos=scale(base.miniworld.n_videos), video_frames=base.miniworld.video_frames)
    return cfg.model_copy(update={"miniworld": mw})


# ---------------------------------------------------------------- child: one build, measured


def run_child(mode: str, cfg_json: str, roots_json: str, out_dir: str, cpus: int, sample_s: float) -> dict:
    cfg = YingConfig.model_validate_json(cfg_json)
    roots = json.loads(roots_json)
    if mode.startswith("qc-"):
        return run_qc_child(mode == "qc-trust", roots_json, out_dir, cpus)  # QC children get the built dir here
    if mode == "local":
        with TreeSampler(sample_s) as rss:
            t0 = time.perf_counter()
            stats = build_unified_local(cfg, roots, out_dir)
            seconds = time.perf_counter() - t0
        idle = 0
    else:
        import ray

        t_init = time.perf_counter()
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        init_s = time.perf_counter() - t_init
        time.sleep(1.0)  # let the cluster's agents finish starting, so "idle" is idle
        with TreeSampler(sample_s) as rss:
            idle = rss.idle
            t0 = time.perf_counter()
            stats = build_unified(cfg, roots, out_dir)
            seconds = time.perf_counter() - t0
        ray.shutdown()
    read = sum(c["read"] for s in stats.values() for c in s.values())
    written = sum(c["written"] for s in stats.values() for c in s.values())
    # The build's own count: ``read`` - ``written`` is not it where a source's unit of reading gives
    # several records (a LLaVA conversation is one record per gpt turn).
    rejected = sum(c["rejected"] for s in stats.values() for c in s.values())
    out = {"mode": mode, "seconds": seconds, "read": read, "written": written,
           "rejected": rejected, "peak_rss": rss.peak, "idle_rss": idle, "cpu_s": rss.cpu_used,
           "peak_mib_by_process": {f"{k} x{n}": round(v / 2**20) for k, (v, n) in sorted(rss.peak_by_name.items())},
           # CPU seconds by what each process was when last seen (a Ray worker that ran listing tasks
           # and then hosts a Ray Data actor counts under the actor)
           "cpu_by_kind": {k: round(c, 2) for k, c in sorted(rss.cpu_by_kind.items(), key=lambda kc: -kc[1])}}
    if mode != "local":
        out["ray_init_s"] = init_s
    return out


def run_qc_child(trust_build: bool, in_dir_json: str, out_dir: str, cpus: int) -> dict:
    """QC of a built dir on a fresh Ray cluster, trusting the build's image digests or not."""
    import ray

    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    time.sleep(1.0)
    t0 = time.perf_counter()
    counts = check_records(json.loads(in_dir_json), out_dir, use_ray=True, trust_build=trust_build,
                           progress_interval_s=3600)
    seconds = time.perf_counter() - t0
    ray.shutdown()
    return {"seconds": seconds, "checked": counts["checked"], "decoded": counts["images_decoded"],
            "spared": counts["images_spared"]}


def spawn_child(mode: str, cfg: YingConfig, roots: dict, out_dir: str, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, "--child-cfg", cfg.model_dump_json(),
           "--child-roots", json.dumps(roots), "--child-out", out_dir, "--cpus", str(args.cpus),
           "--sample-s", str(args.sample_s)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} build of {out_dir} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- figures from the built outputs


def passthrough_share(cfg: YingConfig, roots: dict, out_dir: str) -> tuple[int, int]:
    """(images without a visual prompt, those byte-identical to their source file)."""
    sources = {}
    listing = (row for task in cfg.data.tasks for split in get_task(task).SPEC.splits
               for row in iter_listing(task, roots[task], split, cfg.data.max_per_split))
    for row in listing:
        if row["kind"] != "instance":
            continue
        inst = json.loads(row["instance"])
        if inst["video_path"]:
            continue  # sampled frames are new images; there is no source file to compare with
        sources[make_record_id(inst["task"], inst["split"], inst["source_id"])] = inst
    checked = identical = 0
    for split in SPLITS:
        for rec in read_records(out_dir, split):
            inst = sources.get(rec["id"])
            if inst is None:
                continue
            boxes = inst["boxes"] or []
            for k, (path, data) in enumerate(zip(inst["image_paths"], rec["images"])):
                if k < len(boxes) and boxes[k]:
                    continue  # a red box was drawn: bytes are meant to differ
                checked += 1
                with open(path, "rb") as f:
                    identical += f.read() == data
    return checked, identical


def dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def jsonl_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files
               if f.endswith(".jsonl"))


# ---------------------------------------------------------------- main


def sources(cfg: YingConfig, root: str) -> dict[str, str]:
    """The mini-world for ``cfg`` under ``root``; reused when a previous run left the same one."""
    stamp = os.path.join(root, "_bench_stamp.json")
    want = {"miniworld": cfg.miniworld.model_dump(), "tasks": cfg.data.tasks}
    roots = {t: os.path.join(root, t) for t in cfg.data.tasks}
    if os.path.exists(stamp) and json.load(open(stamp)) == want:
        print(f"reusing the mini-world in {root}", flush=True)
        return roots
    shutil.rmtree(root, ignore_errors=True)
    t = time.perf_counter()
    roots = generate_miniworld(root, cfg.miniworld, seed=0, tasks=cfg.data.tasks)
    with open(stamp, "w") as f:
        json.dump(want, f)
    print(f"generated the mini-world in {root} in {time.perf_counter() - t:.1f}s", flush=True)
    return roots


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=float, default=0.8,
                    help="mini-world size at 1x, as a fraction of the tiny preset's "
                         "(default 0.8: ~8k records at 1x, ~80k at 10x; Ray's fixed start-up, ~4 CPU-seconds, "
                         "is then a few percent of the work)")
    ap.add_argument("--factor", type=int, default=10, help="records multiplier of the memory comparison (default 10)")
    ap.add_argument("--image-size", type=int, default=512,
                    help="side of the generated images in pixels (default 512: about a COCO image's pixel count, "
                         "so decoding weighs per record and JPEG bytes dominate storage, as with real data)")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the benchmark's Ray cluster (default 2)")
    ap.add_argument("--sample-s", type=float, default=0.05, help="RSS sampling period in seconds (default 0.05)")
    ap.add_argument("--workdir", default=None, help="where sources and outputs go (default: a temporary dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir afterwards")
    ap.add_argument("--child", choices=["ray", "local", "qc-trust", "qc-decode"], help=argparse.SUPPRESS)
    ap.add_argument("--child-cfg", help=argparse.SUPPRESS)
    ap.add_argument("--child-roots", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        print(json.dumps(run_child(args.child, args.child_cfg, args.child_roots, args.child_out,
                                   args.cpus, args.sample_s)))
        return
    if args.size <= 0 or args.factor < 2:
        ap.error("--size must be > 0 and --factor >= 2")

    work = args.workdir or tempfile.mkdtemp(prefix="bench_build-")
    os.makedirs(work, exist_ok=True)
    try:
        cfg1 = bench_config(args.image_size, args.size)
        cfgN = bench_config(args.image_size, args.size * args.factor)
        print(f"tasks: {', '.join(cfg1.data.tasks)}; image size {args.image_size}px; work dir {work}", flush=True)
        roots1 = sources(cfg1, os.path.join(work, "src-1x"))
        rootsN = sources(cfgN, os.path.join(work, f"src-{args.factor}x"))

        out = lambda name: os.path.join(work, name)  # noqa: E731
        print("building 1x with Ray Data ...", flush=True)
        ray1 = spawn_child("ray", cfg1, roots1, out("ray-1x"), args)
        print(f"  {ray1['read']} read, {ray1['written']} written, {ray1['rejected']} rejected in "
              f"{ray1['seconds']:.2f}s (ray.init {ray1['ray_init_s']:.1f}s, outside the timer)", flush=True)
        print("building 1x in one plain process ...", flush=True)
        local1 = spawn_child("local", cfg1, roots1, out("local-1x"), args)
        print(f"  {local1['written']} written in {local1['seconds']:.2f}s", flush=True)
        shutil.rmtree(out("local-1x"), ignore_errors=True)
        print(f"building {args.factor}x with Ray Data ...", flush=True)
        rayN = spawn_child("ray", cfgN, rootsN, out(f"ray-{args.factor}x"), args)
        print(f"  {rayN['read']} read, {rayN['written']} written in {rayN['seconds']:.2f}s", flush=True)
        shutil.rmtree(out(f"ray-{args.factor}x"), ignore_errors=True)
        print(f"building {args.factor}x in one plain process ...", flush=True)
        localN = spawn_child("local", cfgN, rootsN, out(f"local-{args.factor}x"), args)
        print(f"  {localN['written']} written in {localN['seconds']:.2f}s", flush=True)
        shutil.rmtree(out(f"local-{args.factor}x"), ignore_errors=True)
        for a, b in ((ray1, local1), (rayN, localN)):
            if (a["written"], a["rejected"]) != (b["written"], b["rejected"]):
                raise RuntimeError(f"the two builds disagree: Ray {a}, local {b}")

        print("QC of the 1x build, trusting the build's image digests, then decoding every image again ...", flush=True)
        qc_trust = spawn_child("qc-trust", cfg1, out("ray-1x"), out("qc-1x"), args)
        qc_decode = spawn_child("qc-decode", cfg1, out("ray-1x"), out("qc-1x"), args)
        shutil.rmtree(out("qc-1x"), ignore_errors=True)
        images = qc_decode["decoded"]

        rate = lambda r: r["read"] / r["seconds"]  # noqa: E731
        speedup1 = rate(ray1) / rate(local1)
        speedup = rate(rayN) / rate(localN)
        mib = 2**20
        rss_ratio = rayN["peak_rss"] / ray1["peak_rss"]
        grow1, growN = ray1["peak_rss"] - ray1["idle_rss"], rayN["peak_rss"] - rayN["idle_rss"]

        checked, identical = passthrough_share(cfg1, roots1, out("ray-1x"))
        parquet = sum(dir_bytes(split_dir(out("ray-1x"), s)) for s in SPLITS)
        shutil.rmtree(out("m3it-1x"), ignore_errors=True)
        export_m3it(out("ray-1x"), out("m3it-1x"), progress=None)
        jsonl = jsonl_bytes(out("m3it-1x"))  # the split files; instructions.json is not a record

        print(f"speed at {args.factor}x ({rayN['read']} records): Ray Data on {args.cpus} CPUs {rate(rayN):.1f} "
              f"records/s, one process {rate(localN):.1f} records/s: x{speedup:.2f} "
              f"(at 1x, where fixed start-up costs weigh more: x{speedup1:.2f})")
        print(f"  CPU seconds of the whole process tree at {args.factor}x: Ray {rayN['cpu_s']:.1f}, one process "
              f"{localN['cpu_s']:.1f}; on {args.cpus} otherwise idle CPUs that bounds the speed-up at "
              f"x{localN['cpu_s'] / (rayN['cpu_s'] / args.cpus):.2f} (a check on figures taken on a busy machine)")
        # Where the Ray build's CPU goes beyond the same work in one process, and the speed-up that
        # leaves: the build's functions cost the same CPU in both (same listing, chunks, records), so
        # every CPU-second the Ray tree spends beyond the one process is Ray's own (raylet, GCS, the
        # driver's executor, Ray Data's actors, worker start-up) and doesn't shrink with more CPUs;
        # CPU idle while the build ran (start-up latency, the last chunk) is the rest.
        extra = rayN["cpu_s"] - localN["cpu_s"]
        idle_cpu = args.cpus * rayN["seconds"] - rayN["cpu_s"]
        bound = localN["cpu_s"] / ((localN["cpu_s"] + extra) / args.cpus)
        print(f"  where the Ray build's time goes at {args.factor}x: {rayN['cpu_s']:.1f} CPU-s over {rayN['seconds']:.1f}s "
              f"on {args.cpus} CPUs ({idle_cpu:.1f} CPU-s idle); {extra:.1f} CPU-s more than one process "
              f"({localN['cpu_s']:.1f}): Amdahl bound x{bound:.2f} from that alone, x{speedup:.2f} measured")
        print(f"  CPU-s by process kind at {args.factor}x: {rayN['cpu_by_kind']}")
        print(f"passthrough: {identical}/{checked} images without a visual prompt are byte-identical to their source")
        print(f"memory: peak RSS (driver + Ray processes) {ray1['peak_rss'] / mib:.0f} MiB at 1x "
              f"({ray1['read']} records), {rayN['peak_rss'] / mib:.0f} MiB at {args.factor}x "
              f"({rayN['read']}): x{rss_ratio:.3f}; above the idle cluster {grow1 / mib:.0f} -> {growN / mib:.0f} MiB "
              f"(one plain process: {local1['peak_rss'] / mib:.0f} -> {localN['peak_rss'] / mib:.0f} MiB)")
        print(f"  peak MiB by process, 1x: {ray1['peak_mib_by_process']}")
        print(f"  peak MiB by process, {args.factor}x: {rayN['peak_mib_by_process']}")
        print(f"bytes: Parquet {parquet / mib:.2f} MiB, M3IT base64 JSONL {jsonl / mib:.2f} MiB: x{parquet / jsonl:.3f}")
        print(f"qc: {qc_trust['checked']} records, {images} images: {qc_trust['decoded']} decoded when QC checks the "
              f"build's digests ({qc_trust['seconds']:.1f}s), all {images} when it decodes them again "
              f"({qc_decode['seconds']:.1f}s); decodes per image over build + QC: "
              f"{1 + qc_trust['decoded'] / max(images, 1):.2f} (against 2.00)")
        figures = {
            "speedup_2cpu": round(speedup, 3),
            "passthrough_identical": round(identical / checked, 4) if checked else None,
            "rss_ratio_10x": round(rss_ratio, 3),
            "bytes_ratio_vs_jsonl": round(parquet / jsonl, 3),
            "qc_decodes_per_image": round(qc_trust["decoded"] / max(images, 1), 3),
            "qc_speedup_one_decode": round(qc_decode["seconds"] / qc_trust["seconds"], 3),
            "ray_extra_cpu_s": round(extra, 2),
            "ray_idle_cpu_s": round(idle_cpu, 2),
            "speedup_bound_cpu": round(bound, 3),
        }
        for key in ("qc_decodes_per_image", "qc_speedup_one_decode", "ray_extra_cpu_s", "ray_idle_cpu_s",
                    "speedup_bound_cpu"):
            print(f"  {key:<22} {figures[key]!s:>8}  (no goal)")
        for key, (op, goal) in GOALS.items():
            v = figures[key]
            met = v is not None and (v >= goal if op == ">=" else v <= goal)
            print(f"  {key:<22} {v!s:>8}  goal {op} {goal}  {'met' if met else 'MISSED'}")
        print(json.dumps(figures))
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
