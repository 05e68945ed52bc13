"""Serve under load: 16 concurrent clients against the tiny model, dynamic batching vs none.

    python benchmarks/bench_serve.py [--seconds 60] [--clients 16] [--max-tokens 32]

Builds a randomly initialised Ying-VLM at the tiny preset's real size (a random model costs the same
per token as a trained one), deploys the Serve app on a local Ray cluster and runs, side by side:

1. batched: ``serve.max_batch_size=16``, 16 clients sending valid chat requests for ``--seconds``;
2. unbatched: the same with ``serve.max_batch_size=1``;
3. mixed: batched, one request in three malformed (a truncated JPEG, bad base64, too many images):
   good answers must keep coming and no request may get a 5xx.

Every request asks for exactly ``--max-tokens`` tokens (``stop`` never matches a random model's
output often enough to matter; ``finish_reason`` is counted). The last line is JSON with
``batching_speedup_16`` (goal >= 4), ``errors_5xx`` (goal 0) and ``p99_ms`` (batched).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import socket
import statistics
import sys
import tempfile
import time

import httpx

CLIENTS = 16


def _png(color) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 90)).save(buf, format="JPEG")
    return buf.getvalue()


def _url(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"


def _body(i: int, max_tokens: int, images: list[str] | None = None) -> dict:
    colors = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 30)]
    images = images or [_url(_png(colors[i % len(colors)]))]
    content = [{"type": "text", "text": "Answer the question."}, {"type": "text", "text": f"What color is shape {i}?"}]
    content += [{"type": "image_url", "image_url": {"url": u}} for u in images]
    return {"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}


def _bad_bodies(max_tokens: int) -> list[dict]:
    jpeg = _jpeg()
    return [
        _body(0, max_tokens, [_url(jpeg[: len(jpeg) // 2], "image/jpeg")]),  # truncated JPEG
        _body(1, max_tokens, ["data:image/png;base64,not-base64!!"]),  # bad base64
        _body(2, max_tokens, [_url(_png((1, 2, 3)))] * 200),  # 200 copies of an image
    ]


async def _load(url: str, seconds: float, clients: int, max_tokens: int, bad_every: int = 0) -> dict:
    """``clients`` loops sending requests for ``seconds``; latencies of good answers, status counts."""
    good = [_body(i, max_tokens) for i in range(8)]
    bad = _bad_bodies(max_tokens)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lengths: dict[str, int] = {}
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def worker(w: int):
            n = 0
            while time.perf_counter() < deadline:
                n += 1
                is_bad = bad_every and n % bad_every == 0
                body = bad[(w + n) % len(bad)] if is_bad else good[(w + n) % len(good)]
                t = time.perf_counter()
                try:
                    r = await client.post("/v1/chat/completions", json=body)
                    code = r.status_code
                except httpx.HTTPError:
                    code = 599  # no answer at all counts as a server failure
                statuses[code] = statuses.get(code, 0) + 1
                if code == 200 and not is_bad:
                    latencies.append(time.perf_counter() - t)
                    reason = r.json()["choices"][0]["finish_reason"]
                    lengths[reason] = lengths.get(reason, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(clients)))
        elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float:
        return 1000 * latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else float("nan")

    return {"good_rps": len(latencies) / elapsed, "p50_ms": pct(0.50), "p99_ms": pct(0.99),
            "mean_ms": 1000 * statistics.fmean(latencies) if latencies else float("nan"),
            "statuses": dict(sorted(statuses.items())), "finish_reasons": lengths,
            "errors_5xx": sum(n for code, n in statuses.items() if code >= 500)}


def _serve_processes() -> dict[str, list]:
    """Serve's processes on this machine by role, to charge CPU time per request (load-independent)."""
    import psutil

    roles = {"model": "ServeReplica:bench:YingModel", "ingress": "ServeReplica:bench:YingIngress",
             "proxy": "ProxyActor"}
    found: dict[str, list] = {r: [] for r in roles}
    for proc in psutil.process_iter(["cmdline"]):
        line = " ".join(proc.info["cmdline"] or [])
        for role, marker in roles.items():
            if marker in line:
                found[role].append(proc)
    return found


def _cpu_seconds(procs: dict[str, list]) -> dict[str, float]:
    out = {}
    for role, ps in procs.items():
        total = 0.0
        for p in ps:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except Exception:
                pass
        out[role] = total
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _checkpoint(root: str) -> str:
    from ying.config import load_config
    from ying.model.checkpoint import save_checkpoint
    from ying.model.tokenizer import build_tokenizer
    from ying.model.vlm import build_model

    cfg = load_config("tiny")
    tok = build_tokenizer(cfg.model.tokenizer)
    path = os.path.join(root, "tiny")
    save_checkpoint(build_model(cfg.model, tok, seed=0), tok, cfg.model, path, {"stage": "bench"})
    return path


def _deploy(ckpt: str, port: int, max_batch_size: int, batch_wait_s: float) -> str:
    from ying.config import load_config
    from ying.serve.app import application
    from ying.serve.models import ServedModels
    from ying.serve.runner import deploy

    cfg = load_config("tiny", overrides=[f"serve.max_batch_size={max_batch_size}", "serve.app_name=bench",
                                         f"serve.port={port}", f"serve.batch_wait_timeout_s={batch_wait_s}"])
    app = application(cfg, ServedModels({"tiny": ckpt}, "tiny"), None)
    return deploy(app, host="127.0.0.1", port=port, app_name="bench", has_token=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60.0, help="load per phase (default 60)")
    p.add_argument("--clients", type=int, default=CLIENTS)
    p.add_argument("--max-tokens", type=int, default=32, help="tokens each request asks for (default 32)")
    p.add_argument("--batch-wait-s", type=float, default=None,
                   help="serve.batch_wait_timeout_s (default: the tiny preset's)")
    args = p.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from ying.serve.runner import delete_app

    tmp = tempfile.mkdtemp(prefix="bench-serve-")
    ckpt = _checkpoint(tmp)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    port = _free_port()
    results = {}
    phases = [("batched", 16, 0), ("unbatched", 1, 0), ("mixed", 16, 3)]
    from ying.config import load_config

    batch_wait = args.batch_wait_s if args.batch_wait_s is not None else load_config("tiny").serve.batch_wait_timeout_s
    for name, batch, bad_every in phases:
        url = _deploy(ckpt, port, batch, batch_wait)
        warm = asyncio.run(_load(url, 3.0, args.clients, args.max_tokens))  # load the model, fill caches
        if warm["errors_5xx"]:
            print(f"warm-up: {warm}", file=sys.stderr)
        procs = _serve_processes()
        before = _cpu_seconds(procs)
        results[name] = asyncio.run(_load(url, args.seconds, args.clients, args.max_tokens, bad_every))
        after = _cpu_seconds(procs)
        results[name]["errors_5xx"] += warm["errors_5xx"]
        delete_app("bench")
        r = results[name]
        n_good = max(1, round(r["good_rps"] * args.seconds))
        r["cpu_ms_per_request"] = {role: round(1000 * (after[role] - before[role]) / n_good, 1) for role in before}
        print(f"{name:9s} max_batch_size={batch:2d} clients={args.clients} {r['good_rps']:6.1f} good req/s  "
              f"p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  statuses {r['statuses']}  "
              f"finish {r['finish_reasons']}  CPU ms per good request {r['cpu_ms_per_request']}", flush=True)
    ray.shutdown()
    speedup = results["batched"]["good_rps"] / results["unbatched"]["good_rps"]
    print(f"batching speedup at {args.clients} clients: {speedup:.2f}x; mixed traffic keeps "
          f"{results['mixed']['good_rps'] / results['batched']['good_rps']:.0%} of the good throughput")
    print(json.dumps({
        "batching_speedup_16": round(speedup, 2),
        "errors_5xx": sum(r["errors_5xx"] for r in results.values()),
        "p99_ms": round(results["batched"]["p99_ms"], 1),
        "p50_ms": round(results["batched"]["p50_ms"], 1),
        "rps_batched": round(results["batched"]["good_rps"], 1),
        "rps_unbatched": round(results["unbatched"]["good_rps"], 1),
        "p50_ms_unbatched": round(results["unbatched"]["p50_ms"], 1),
        "p99_ms_unbatched": round(results["unbatched"]["p99_ms"], 1),
        "mixed_good_rps": round(results["mixed"]["good_rps"], 1),
        "mixed_statuses": results["mixed"]["statuses"],
        "cpu_ms_per_request_batched": results["batched"]["cpu_ms_per_request"],
        "cpu_ms_per_request_unbatched": results["unbatched"]["cpu_ms_per_request"],
        "clients": args.clients, "seconds": args.seconds, "max_tokens": args.max_tokens,
        "batch_wait_timeout_s": batch_wait, "load_average_1m": round(os.getloadavg()[0], 1),
    }))


if __name__ == "__main__":
    main()
