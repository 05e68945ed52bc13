"""Serve under load: 16 concurrent clients against the tiny model, dynamic batching vs none.

    python benchmarks/bench_serve.py [--seconds 60] [--clients 16] [--max-tokens 32]

Builds a randomly initialised Ying-VLM at the tiny preset's real size (a random model costs the same
per token as a trained one), deploys the Serve app on a local Ray cluster and runs, side by side:

1. batched: ``serve.max_batch_size=16``, 16 clients sending valid chat requests for ``--seconds``;
2. unbatched: the same with ``serve.max_batch_size=1``. Both apps stay deployed and take turns in
   15 s windows, so background load on a shared machine weighs on both alike;
3. mixed: batched, one request in three malformed (a truncated JPEG, bad base64, too many images):
   good answers must keep coming and no request may get a 5xx.

It also prints the model alone (CPU time of one batch of 16 vs 16 single requests) and the CPU time
each Serve process spends per answered request, which background load cannot inflate as much as
wall time.

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
    return {"latencies": latencies, "good": len(latencies), "elapsed": elapsed,
            "statuses": dict(sorted(statuses.items())), "finish_reasons": lengths,
            "errors_5xx": sum(n for code, n in statuses.items() if code >= 500)}


def _serve_processes(app: str) -> dict[str, list]:
    """An app's Serve processes by role, to charge CPU time per request (what load on the machine
    can't hide). The proxy is shared by both apps: its time is charged to the app under load."""
    import psutil

    roles = {"model": f"ServeReplica:{app}:YingModel", "ingress": f"ServeReplica:{app}:YingIngress",
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


def _deploy(ckpt: str, port: int, max_batch_size: int, batch_wait_s: float, app_name: str) -> str:
    from ying.config import load_config
    from ying.serve.app import application
    from ying.serve.models import ServedModels
    from ying.serve.runner import deploy

    cfg = load_config("tiny", overrides=[f"serve.max_batch_size={max_batch_size}", f"serve.app_name={app_name}",
                                         f"serve.port={port}", f"serve.batch_wait_timeout_s={batch_wait_s}",
                                         f"serve.route_prefix=/{app_name}"])
    app = application(cfg, ServedModels({"tiny": ckpt}, "tiny"), None)
    return deploy(app, host="127.0.0.1", port=port, app_name=app_name, route_prefix=f"/{app_name}", has_token=False)


def _engine_speedup(ckpt: str, clients: int, max_tokens: int) -> float:
    """The model alone, in this process: one batch of ``clients`` requests vs one request at a time."""
    import torch

    from ying.serve.engine import GenerationRequest, load_engine

    torch.set_num_threads(1)
    engine = load_engine(ckpt, "tiny", device="cpu")
    reqs = [GenerationRequest(images=[_png((i * 15 % 255, 40, 90))], instruction="Answer the question.",
                              inputs=f"What color is shape {i}?", max_new_tokens=max_tokens) for i in range(clients)]
    engine.generate(reqs[:2])
    t = time.process_time()
    for r in reqs:
        engine.generate([r])
    one_by_one = time.process_time() - t
    t = time.process_time()
    engine.generate(reqs)
    batched = time.process_time() - t
    print(f"model alone: {1000 * one_by_one / clients:.1f} CPU ms per request one at a time, "
          f"{1000 * batched / clients:.1f} in a batch of {clients}", flush=True)
    return one_by_one / batched


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
    from ray import serve

    from ying.serve.runner import delete_app

    tmp = tempfile.mkdtemp(prefix="bench-serve-")
    ckpt = _checkpoint(tmp)
    engine_speedup = _engine_speedup(ckpt, args.clients, args.max_tokens)
    print(f"model alone (CPU time, one thread): a batch of {args.clients} costs {engine_speedup:.1f}x less per "
          "request than one at a time", flush=True)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    port = _free_port()
    from ying.config import load_config

    batch_wait = args.batch_wait_s if args.batch_wait_s is not None else load_config("tiny").serve.batch_wait_timeout_s
    # Both apps stay up and take turns under load, so both see the same background load on the machine.
    urls = {"batched": _deploy(ckpt, port, 16, batch_wait, "b16"), "unbatched": _deploy(ckpt, port, 1, batch_wait, "b1")}
    apps = {"batched": "b16", "unbatched": "b1"}
    for name, url in urls.items():
        warm = asyncio.run(_load(url, 3.0, args.clients, args.max_tokens))  # load the model, fill caches
        if warm["errors_5xx"]:
            print(f"{name} warm-up: {warm}", file=sys.stderr)
    rounds = max(1, int(args.seconds // 15))
    totals: dict[str, dict] = {}
    for _ in range(rounds):
        for name in ("batched", "unbatched"):
            procs = _serve_processes(apps[name])
            before = _cpu_seconds(procs)
            r = asyncio.run(_load(urls[name], args.seconds / rounds, args.clients, args.max_tokens))
            after = _cpu_seconds(procs)
            t = totals.setdefault(name, {"latencies": [], "good": 0, "statuses": {}, "errors_5xx": 0,
                                         "finish_reasons": {}, "cpu": {k: 0.0 for k in before}})
            t["latencies"] += r.pop("latencies")
            t["good"] += r["good"]
            t["errors_5xx"] += r["errors_5xx"]
            for k, v in r["statuses"].items():
                t["statuses"][k] = t["statuses"].get(k, 0) + v
            for k, v in r["finish_reasons"].items():
                t["finish_reasons"][k] = t["finish_reasons"].get(k, 0) + v
            for k in before:
                t["cpu"][k] += after[k] - before[k]
    results = {name: _summary(t, args.seconds) for name, t in totals.items()}
    for name in ("batched", "unbatched"):
        stats = serve.get_deployment_handle("YingModel", app_name=apps[name]).batch_stats.remote().result()
        results[name]["mean_batch_size"] = round(stats["requests"] / max(1, stats["batches"]), 2)
    for name, batch in (("batched", 16), ("unbatched", 1)):
        _print(name, batch, args.clients, results[name])
    delete_app("b1")
    procs = _serve_processes("b16")
    before = _cpu_seconds(procs)
    mixed_seconds = max(15.0, args.seconds / 2)
    r = asyncio.run(_load(urls["batched"], mixed_seconds, args.clients, args.max_tokens, bad_every=3))
    after = _cpu_seconds(procs)
    r["cpu"] = {k: after[k] - before[k] for k in before}
    results["mixed"] = _summary(r, mixed_seconds)
    _print("mixed", 16, args.clients, results["mixed"])
    delete_app("b16")
    ray.shutdown()
    speedup = results["batched"]["good_rps"] / results["unbatched"]["good_rps"]
    print(f"batching speedup at {args.clients} clients: {speedup:.2f}x; mixed traffic (1 in 3 malformed) keeps "
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
        "model_alone_batch_speedup_16": round(engine_speedup, 2),
        "mean_batch_size": results["batched"]["mean_batch_size"],
        "cpu_ms_per_request_batched": results["batched"]["cpu_ms_per_request"],
        "cpu_ms_per_request_unbatched": results["unbatched"]["cpu_ms_per_request"],
        "clients": args.clients, "seconds": args.seconds, "max_tokens": args.max_tokens,
        "batch_wait_timeout_s": batch_wait, "load_average_1m": round(os.getloadavg()[0], 1),
    }))


def _summary(t: dict, seconds: float) -> dict:
    lat = sorted(t["latencies"])

    def pct(p: float) -> float:
        return 1000 * lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")

    n = max(1, t["good"])
    return {"good_rps": t["good"] / seconds, "p50_ms": pct(0.5), "p99_ms": pct(0.99), "statuses": t["statuses"],
            "finish_reasons": t["finish_reasons"], "errors_5xx": t["errors_5xx"],
            "cpu_ms_per_request": {k: round(1000 * v / n, 1) for k, v in t["cpu"].items()}}


def _print(name: str, batch: int, clients: int, r: dict) -> None:
    print(f"{name:9s} max_batch_size={batch:2d} clients={clients} {r['good_rps']:6.1f} good req/s  "
          f"p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  statuses {r['statuses']}  "
          f"finish {r['finish_reasons']}  mean batch {r.get('mean_batch_size', '-')}  "
          f"CPU ms per good request {r['cpu_ms_per_request']}", flush=True)


if __name__ == "__main__":
    main()
