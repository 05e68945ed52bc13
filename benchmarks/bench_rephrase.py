"""Rephrasing over every split of a built dataset against a local OpenAI-compatible server: rate vs the cap,
prompts paid twice, kill and resume, injected faults.

    python benchmarks/bench_rephrase.py                                  # builds the tiny preset's dataset first
    python benchmarks/bench_rephrase.py --data-dir runs/default/unify    # or any built dataset (records/<split>/)

The dataset: ``--data-dir``, else the embedded default's ``sources`` and ``unify`` stages are run into a
temporary run dir (``workflows/full.py --until unify``). The stage rephrases the tasks of its default
config (every adapter with ``SPEC.rephrase``), over all splits, with ``--actors`` (>= 2) prompt owners and
as many Ray Data actors. Each phase runs against a fresh stub server (tests/openai_stub_server.py) that
answers in ``--latency`` seconds and admits ``--rpm`` requests per minute (429 + Retry-After beyond it);
the stage's limiter is set to the same cap.

1. sequential: one ``openai`` request at a time over the first ``--sequential-n`` prompts (the baseline);
2. clean: the stage over the whole dataset. ``rate_vs_cap``: the requests the server received, from the
   first to the last, per minute, over the cap; ``paid_twice``: prompts the server answered more than once;
3. kill and resume: the stage runs in a child process that is SIGKILLed once the server has answered
   about half; a second run resumes from the cache. ``paid_twice_after_resume`` as above;
4. faults: ``--fault-rate`` of the requests fail, in equal parts 429, 500, a hang past the client
   timeout, malformed JSON, a refusal. An injected 429 says what a provider's requests/min limit says:
   ``retry-after-ms`` one request interval at the cap (the whole seconds of ``Retry-After`` round up);
   ``--fault-retry-after`` changes it. ``rate_vs_cap_faults``: every request the server received,
   failed ones included, from the first to the last, per minute, over the cap.

``lost`` counts input rows missing from the output (every split). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local cluster; children inherit it

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import pyarrow.parquet as pq  # noqa: E402

from ying.config import RephraseConfig  # noqa: E402
from ying.data.rephrase import build_prompt, rephrase_records  # noqa: E402
from ying.data.rephrase.stage import item_for_row, load_coco_captions  # noqa: E402
from ying.data.schema import SPLITS  # noqa: E402


def build_dataset(tmp: Path) -> Path:
    run_dir = tmp / "run"
    print(f"[bench] building the tiny preset's dataset (sources + unify) in {run_dir}", flush=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run([sys.executable, str(ROOT / "workflows" / "full.py"), "--until", "unify", "--run-dir", str(run_dir)],
                   check=True, env=env)
    return run_dir / "unify"


def read_split_rows(data_dir: Path, columns: list[str]) -> dict[str, list[dict]]:
    out = {}
    for split in SPLITS:
        d = data_dir / "records" / split
        if d.exists() and any(d.glob("*.parquet")):
            out[split] = pq.read_table(d, columns=columns).to_pylist()
    return out


def stage_cfg(base_url: str, args, **kw) -> RephraseConfig:
    return RephraseConfig(provider="openai", base_url=base_url, model="stub", rpm=args.rpm, timeout_s=args.timeout,
                          max_retries=6, actors=args.actors, max_concurrency=args.max_concurrency,
                          batch_size=args.batch_size, progress_interval_s=15.0, **kw)


def lost_and_unexplained(inputs: dict[str, set[str]], out: Path, tasks: set[str]) -> tuple[int, int, dict]:
    lost, unexplained, statuses = 0, 0, Counter()
    for split, ids in inputs.items():
        d = out / "records" / split
        rows = pq.read_table(d, columns=["id", "task", "meta"]).to_pylist() if d.exists() else []
        lost += len(ids - {r["id"] for r in rows})
        for r in rows:
            if r["task"] not in tasks:
                continue
            status = json.loads(r["meta"]).get("rephrase", {}).get("status", "")
            statuses[status] += 1
            if status != "rephrased" and not re.fullmatch(r"fallback:\S+", status):
                unexplained += 1
    return lost, unexplained, dict(sorted(statuses.items()))


def rate_vs_cap(times: list[float], cap: float) -> float:
    """Requests per minute from the first to the last request, over the cap."""
    times = sorted(times)
    if len(times) < 10:
        return 0.0
    return (len(times) - 1) / (times[-1] - times[0]) * 60 / cap


def steady_rate_vs_cap(times: list[float], cap: float) -> float:
    """The same over the middle 80% of the requests (no opening burst, no draining tail)."""
    times = sorted(times)
    if len(times) < 10:
        return 0.0
    lo, hi = len(times) // 10, len(times) * 9 // 10
    return (hi - lo) / (times[hi] - times[lo]) * 60 / cap


def paid_twice(stub) -> int:
    return sum(1 for c in stub.answered_prompts().values() if c > 1)


def sequential(stub, prompts: list[str], args) -> float:
    import openai

    client = openai.OpenAI(base_url=stub.base_url, api_key="EMPTY", max_retries=0, timeout=args.timeout)
    started = time.monotonic()
    for prompt in prompts:
        try:
            client.chat.completions.create(model="stub", messages=[{"role": "user", "content": prompt}])
        except openai.APIError:
            pass
    elapsed = time.monotonic() - started
    client.close()
    return len(prompts) / elapsed * 60 / args.rpm


def child_main(args) -> None:
    import ray

    ray.init(address=args.child_address, log_to_driver=False)
    rephrase_records(stage_cfg(args.child_base_url, args), args.child_in, args.child_out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None, help="a built dataset (records/<split>/*.parquet); default: build one")
    p.add_argument("--sequential-n", type=int, default=200, help="prompts for the sequential loop (default 200)")
    p.add_argument("--latency", type=float, default=0.2, help="server seconds per answer (default 0.2)")
    p.add_argument("--rpm", type=float, default=1200, help="server requests/min cap = the stage's limit (default 1200)")
    p.add_argument("--fault-rate", type=float, default=0.2, help="injected fault rate in phase 4 (default 0.2)")
    p.add_argument("--fault-retry-after", type=float, default=None,
                   help="seconds an injected 429 asks to wait (default: one request interval at the cap)")
    p.add_argument("--timeout", type=float, default=2.0, help="client timeout per request, seconds")
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--max-concurrency", type=int, default=32, help="requests in flight per prompt owner")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs for the local Ray cluster")
    p.add_argument("--skip-resume", action="store_true", help="leave out phase 3")
    p.add_argument("--child-address", help=argparse.SUPPRESS)
    p.add_argument("--child-base-url", help=argparse.SUPPRESS)
    p.add_argument("--child-in", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child_address:
        child_main(args)
        return
    if args.actors < 2:
        p.error("--actors must be >= 2: the point is that no prompt is paid twice across actors")

    import ray
    from openai_stub_server import OpenAIStubServer

    tmp = Path(tempfile.mkdtemp(prefix="bench-rephrase-"))
    data_dir = Path(args.data_dir).resolve() if args.data_dir else build_dataset(tmp)
    cfg0 = stage_cfg("http://unused", args)
    tasks = set(cfg0.tasks)
    rows = read_split_rows(data_dir, ["id", "task", "lang", "inputs", "outputs", "meta"])
    inputs = {split: {r["id"] for r in rs} for split, rs in rows.items()}
    answers = sum(1 for rs in rows.values() for r in rs if r["task"] in tasks)
    captions = load_coco_captions(cfg0, str(data_dir))
    prompts = [build_prompt(item_for_row(r, captions, set(cfg0.caption_tasks), cfg0.captions_per_image)[0])
               for rs in rows.values() for r in rs if r["task"] in tasks]
    distinct = len(set(prompts))
    by_split = {split: sum(r["task"] in tasks for r in rs) for split, rs in rows.items()}
    print(f"[bench] {data_dir}: {sum(len(v) for v in inputs.values())} records, {answers} answers to rephrase "
          f"({distinct} distinct prompts) in splits {by_split}", flush=True)
    del rows
    server_kw = {"latency_s": args.latency, "rpm_cap": args.rpm}
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)

    print(f"[bench] 1/4 sequential loop over {args.sequential_n} prompts", flush=True)
    with OpenAIStubServer(**server_kw) as stub:
        seq_rate = sequential(stub, list(dict.fromkeys(prompts))[: args.sequential_n], args)
    print(f"[bench]   sequential rate / cap = {seq_rate:.3f}", flush=True)

    print(f"[bench] 2/4 the stage over every split, {args.actors} actors", flush=True)
    with OpenAIStubServer(**server_kw) as stub:
        t0 = time.monotonic()
        counts = rephrase_records(stage_cfg(stub.base_url, args), str(data_dir), str(tmp / "out-clean"))
        wall = time.monotonic() - t0
        times = [r["t"] for r in stub.requests]
        t_first = min(r["t"] for r in stub.requests) if stub.requests else t0
        t_last = max(r["t"] for r in stub.requests) if stub.requests else t0
        clean = {"rate": rate_vs_cap(times, args.rpm), "steady": steady_rate_vs_cap(times, args.rpm),
                 "startup_s": t_first - t0, "drain_s": t0 + wall - t_last,
                 "answered": rate_vs_cap([r["t"] for r in stub.requests if r["status"] == 200], args.rpm),
                 "sent": len(times), "answered_prompts": len(stub.answered_prompts()), "paid_twice": paid_twice(stub),
                 "n_429": stub.count(429), "stage_wall_s": wall,
                 "span_s": (max(times) - min(times)) if times else 0.0}
    lost, unexplained, statuses = lost_and_unexplained(inputs, tmp / "out-clean", tasks)
    print(f"[bench]   rate / cap = {clean['rate']:.3f} first to last request ({clean['steady']:.3f} middle 80%); "
          f"{clean['sent']} requests for {distinct} distinct prompts, {clean['paid_twice']} paid twice, "
          f"{counts['deduped']} rows shared an answer in flight, {counts['cache_hits']} cache hits; server 429s "
          f"{clean['n_429']}; stage wall {wall:.0f}s, sending {clean['span_s']:.0f}s; lost {lost}; statuses {statuses}",
          flush=True)

    resume = {}
    if not args.skip_resume:
        print("[bench] 3/4 kill at ~50% and resume", flush=True)
        with OpenAIStubServer(**server_kw) as stub:
            cmd = [sys.executable, __file__, "--child-address", ray.get_runtime_context().gcs_address,
                   "--child-base-url", stub.base_url, "--child-in", str(data_dir), "--child-out",
                   str(tmp / "out-resume"), "--rpm", str(args.rpm), "--timeout", str(args.timeout), "--actors",
                   str(args.actors), "--batch-size", str(args.batch_size), "--max-concurrency",
                   str(args.max_concurrency)]
            child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while child.poll() is None and len(stub.answered_prompts()) < distinct // 2:
                time.sleep(0.05)
            child.kill()
            child.wait()
            time.sleep(3)  # Ray kills the dead driver's actors; anything they still send counts as "before"
            before = len(stub.answered_prompts())
            resumed = rephrase_records(stage_cfg(stub.base_url, args), str(data_dir), str(tmp / "out-resume"))
            resume = {"before": before, "cache_hits": resumed["cache_hits"], "requests": resumed["requests"],
                      "paid_twice": paid_twice(stub)}
        resume["lost"], _, _ = lost_and_unexplained(inputs, tmp / "out-resume", tasks)
        print(f"[bench]   answered before the kill {before}; resume: {resume['cache_hits']} cache hits, "
              f"{resume['requests']} requests; prompts paid twice {resume['paid_twice']}; lost {resume['lost']}",
              flush=True)

    print(f"[bench] 4/4 {args.fault_rate:.0%} injected faults", flush=True)
    each = args.fault_rate / 5
    faults = {k: each for k in ("429", "500", "timeout", "malformed", "refusal")}
    retry_after = args.fault_retry_after if args.fault_retry_after is not None else 60.0 / args.rpm
    with OpenAIStubServer(**server_kw, faults=faults, timeout_sleep_s=args.timeout + 1,
                          fault_retry_after_s=retry_after) as stub:
        fcounts = rephrase_records(stage_cfg(stub.base_url, args), str(data_dir), str(tmp / "out-faults"))
        ftimes = [r["t"] for r in stub.requests]
        injected = Counter(r["fault"] for r in stub.requests if r["fault"])
        fault = {"rate": rate_vs_cap(ftimes, args.rpm), "steady": steady_rate_vs_cap(ftimes, args.rpm),
                 "sent": len(ftimes), "injected": dict(sorted(injected.items()))}
    lost_faults, unexplained_faults, fstatuses = lost_and_unexplained(inputs, tmp / "out-faults", tasks)
    print(f"[bench]   rate / cap = {fault['rate']:.3f} first to last request ({fault['steady']:.3f} middle 80%), "
          f"{fault['sent']} requests, injected {fault['injected']}; lost {lost_faults}; statuses {fstatuses}; "
          f"failed attempts {fcounts['failures']}", flush=True)
    ray.shutdown()

    print(json.dumps({
        "data_dir": str(data_dir), "answers": answers, "distinct_prompts": distinct, "actors": args.actors,
        "latency_s": args.latency, "rpm_cap": args.rpm, "fault_rate": args.fault_rate,
        "fault_retry_after_s": round(retry_after, 4),
        "rate_vs_cap": round(clean["rate"], 4),
        "rate_vs_cap_steady": round(clean["steady"], 4),
        "answered_rate_vs_cap": round(clean["answered"], 4),
        "stage_wall_s": round(clean["stage_wall_s"], 1),
        "sending_s": round(clean["span_s"], 1),
        "startup_s": round(clean["startup_s"], 1),
        "after_last_request_s": round(clean["drain_s"], 1),
        "rate_vs_cap_wall": round(clean["sent"] / max(clean["stage_wall_s"], 1e-9) * 60 / args.rpm, 4),
        "sequential_rate_vs_cap": round(seq_rate, 4),
        "requests_clean": clean["sent"],
        "paid_twice": clean["paid_twice"],
        "deduped_rows": counts["deduped"],
        "paid_twice_after_resume": resume.get("paid_twice"),
        "rate_vs_cap_faults": round(fault["rate"], 4),
        "rate_vs_cap_faults_steady": round(fault["steady"], 4),
        "lost": lost + resume.get("lost", 0) + lost_faults,
        "fallback_without_reason": unexplained + unexplained_faults,
    }))


if __name__ == "__main__":
    main()
