"""Rephrasing throughput, resume and fault tolerance against a local OpenAI-compatible server.

    python benchmarks/bench_rephrase.py                 # the issue's size: 2,000 answers, 200 ms, 1,200 RPM
    python benchmarks/bench_rephrase.py --n 100         # a smoke run

One run, four phases, each against a fresh stub server (tests/openai_stub_server.py) with ``--latency``
seconds per answer and a ``--rpm`` cap (429 + Retry-After beyond it):

1. sequential: a plain loop, one ``openai`` request at a time (the first ``--sequential-n`` answers);
2. stage: ``rephrase_records`` (Ray Data actor pool, one limiter actor set to the cap) over all answers;
   rate = answered requests per minute over the middle 80% of the server's answers, over the cap
   (also given from the first answer to the last);
3. kill and resume: the stage runs in a child process that is SIGKILLed once the server has answered
   about half; a second run over the same output dir resumes from the cache. repeat fraction = prompts
   the server answered more than once / n;
4. faults: ``--fault-rate`` of requests fail (429, 500, timeout, malformed JSON, refusal in equal parts).

"lost" counts input rows missing from the output. The last line is one JSON object.
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
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local cluster; children inherit it

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from ying.config import RephraseConfig  # noqa: E402
from ying.data.rephrase import RephraseItem, build_prompt, rephrase_records  # noqa: E402
from ying.data.schema import RECORD_SCHEMA  # noqa: E402

TASK = "vqa-v2"


def write_inputs(root: Path, n: int, files: int = 16) -> list[dict]:
    colors = ["red", "blue", "green", "yellow", "white", "black", "brown", "orange"]
    rows = []
    for i in range(n):
        answer = f"{colors[i % len(colors)]} {i}"  # distinct answers: distinct prompts
        rows.append({"id": f"{TASK}-train-{i}", "task": TASK, "category": "vqa", "lang": "en", "split": "train",
                     "images": [b"img"], "instruction": "Answer the question.",
                     "inputs": f"What is written on sign number {i}?", "outputs": answer,
                     "meta": json.dumps({"question_id": i, "image_id": i})})
    d = root / "records" / "train"
    d.mkdir(parents=True)
    per = max(1, -(-n // files))
    for k in range(0, n, per):
        pq.write_table(pa.Table.from_pylist(rows[k:k + per], schema=RECORD_SCHEMA), d / f"part-{k // per:03d}.parquet")
    return rows


def stage_cfg(base_url: str, args, **kw) -> RephraseConfig:
    return RephraseConfig(provider="openai", base_url=base_url, model="stub", tasks=[TASK], rpm=args.rpm,
                          timeout_s=args.timeout, max_retries=6, actors=args.actors, max_concurrency=32,
                          batch_size=args.batch_size, progress_interval_s=5.0, caption_tasks=[], **kw)


def read_outputs(out: Path) -> list[dict]:
    d = out / "records" / "train"
    if not d.exists():
        return []
    return pq.read_table(d, columns=["id", "meta"]).to_pylist()


def lost_and_unexplained(inputs: list[dict], out: Path) -> tuple[int, int, dict]:
    rows = read_outputs(out)
    ids = {r["id"] for r in rows}
    lost = sum(1 for r in inputs if r["id"] not in ids)
    statuses: dict[str, int] = {}
    unexplained = 0
    for r in rows:
        status = json.loads(r["meta"]).get("rephrase", {}).get("status", "")
        statuses[status] = statuses.get(status, 0) + 1
        if status != "rephrased" and not re.fullmatch(r"fallback:\S+", status):
            unexplained += 1
    return lost, unexplained, statuses


def answered_rate_vs_cap(stub, cap: float) -> tuple[float, float]:
    """(steady rate / cap over the middle 80% of answers, rate / cap from the first answer to the last).

    The middle leaves out the opening burst the limiter allows (``burst_s``), which flatters small runs,
    and the tail where the last batches drain.
    """
    times = sorted(r["t"] for r in stub.requests if r["status"] == 200)
    if len(times) < 10:
        return 0.0, 0.0
    lo, hi = len(times) // 10, len(times) * 9 // 10
    steady = (hi - lo) / (times[hi] - times[lo]) * 60 / cap
    full = (len(times) - 1) / (times[-1] - times[0]) * 60 / cap
    return steady, full


def sequential(stub, inputs: list[dict], args) -> float:
    import openai

    client = openai.OpenAI(base_url=stub.base_url, api_key="EMPTY", max_retries=0, timeout=args.timeout)
    rows = inputs[: args.sequential_n]
    started = time.monotonic()
    ok = 0
    for r in rows:
        prompt = build_prompt(RephraseItem(r["inputs"], r["outputs"]))
        try:
            client.chat.completions.create(model="stub", messages=[{"role": "user", "content": prompt}])
            ok += 1
        except openai.APIError:
            pass
    elapsed = time.monotonic() - started
    client.close()
    return ok / elapsed * 60 / args.rpm


def child_main(args) -> None:
    import ray

    ray.init(address=args.child_address, log_to_driver=False)
    rephrase_records(stage_cfg(args.child_base_url, args), args.child_in, args.child_out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="answers to rephrase (default 2000)")
    p.add_argument("--sequential-n", type=int, default=None, help="answers for the sequential loop (default: --n)")
    p.add_argument("--latency", type=float, default=0.2, help="server seconds per answer (default 0.2)")
    p.add_argument("--rpm", type=float, default=1200, help="server requests/min cap = the stage's limit (default 1200)")
    p.add_argument("--fault-rate", type=float, default=0.2, help="injected fault rate in phase 4 (default 0.2)")
    p.add_argument("--timeout", type=float, default=2.0, help="client timeout per request, seconds")
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs for the local Ray cluster")
    p.add_argument("--child-address", help=argparse.SUPPRESS)
    p.add_argument("--child-base-url", help=argparse.SUPPRESS)
    p.add_argument("--child-in", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child_address:
        child_main(args)
        return
    args.sequential_n = args.sequential_n or args.n

    import ray
    from openai_stub_server import OpenAIStubServer

    tmp = Path(tempfile.mkdtemp(prefix="bench-rephrase-"))
    inputs = write_inputs(tmp / "in", args.n)
    server_kw = {"latency_s": args.latency, "rpm_cap": args.rpm}
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)

    print(f"[bench] 1/4 sequential loop over {args.sequential_n} answers", flush=True)
    with OpenAIStubServer(**server_kw) as stub:
        seq_rate = sequential(stub, inputs, args)
    print(f"[bench]   sequential rate / cap = {seq_rate:.3f}", flush=True)

    print(f"[bench] 2/4 Ray stage over {args.n} answers", flush=True)
    with OpenAIStubServer(**server_kw) as stub:
        t0 = time.monotonic()
        counts = rephrase_records(stage_cfg(stub.base_url, args), str(tmp / "in"), str(tmp / "out-stage"))
        wall = time.monotonic() - t0
        rate, full_rate = answered_rate_vs_cap(stub, args.rpm)
        n_429 = stub.count(429)
    lost, unexplained, statuses = lost_and_unexplained(inputs, tmp / "out-stage")
    print(f"[bench]   stage rate / cap = {rate:.3f} steady, {full_rate:.3f} first-to-last answer (wall {wall:.1f}s with start-up; 429s {n_429}); lost {lost}; "
          f"statuses {statuses}; failures {counts['failures']}", flush=True)

    print("[bench] 3/4 kill at ~50% and resume", flush=True)
    with OpenAIStubServer(**server_kw) as stub:
        cmd = [sys.executable, __file__, "--child-address", ray.get_runtime_context().gcs_address,
               "--child-base-url", stub.base_url, "--child-in", str(tmp / "in"), "--child-out", str(tmp / "out-resume"),
               "--rpm", str(args.rpm), "--timeout", str(args.timeout), "--actors", str(args.actors),
               "--batch-size", str(args.batch_size)]
        child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while child.poll() is None and sum(stub.answered_prompts().values()) < args.n // 2:
            time.sleep(0.05)
        child.kill()
        child.wait()
        time.sleep(3)  # Ray kills the dead driver's actors; anything they still send counts as "before"
        before = sum(stub.answered_prompts().values())
        resumed = rephrase_records(stage_cfg(stub.base_url, args), str(tmp / "in"), str(tmp / "out-resume"))
        answered = stub.answered_prompts()
        repeats = sum(1 for c in answered.values() if c > 1)
    repeat_fraction = repeats / args.n
    lost_resume, _, _ = lost_and_unexplained(inputs, tmp / "out-resume")
    print(f"[bench]   answered before the kill {before}; resume: {resumed['cache_hits']} cache hits, "
          f"{resumed['requests']} requests; prompts answered twice {repeats} ({repeat_fraction:.4f}); "
          f"lost {lost_resume}", flush=True)

    print(f"[bench] 4/4 {args.fault_rate:.0%} injected faults", flush=True)
    each = args.fault_rate / 5
    faults = {k: each for k in ("429", "500", "timeout", "malformed", "refusal")}
    with OpenAIStubServer(**server_kw, faults=faults, timeout_sleep_s=args.timeout + 1, fault_retry_after_s=1.0) as stub:
        fcounts = rephrase_records(stage_cfg(stub.base_url, args), str(tmp / "in"), str(tmp / "out-faults"))
    lost_faults, unexplained_faults, fstatuses = lost_and_unexplained(inputs, tmp / "out-faults")
    print(f"[bench]   lost {lost_faults}; statuses {fstatuses}; failures {fcounts['failures']}", flush=True)
    ray.shutdown()

    print(json.dumps({
        "n": args.n, "latency_s": args.latency, "rpm_cap": args.rpm,
        "rate_vs_cap": round(rate, 4),
        "rate_vs_cap_first_to_last": round(full_rate, 4),
        "sequential_rate_vs_cap": round(seq_rate, 4),
        "lost": lost + lost_resume,
        "repeat_fraction_after_resume": round(repeat_fraction, 5),
        "lost_under_faults": lost_faults,
        "fallback_without_reason": unexplained + unexplained_faults,
    }))


if __name__ == "__main__":
    main()
