"""Serve under load: 16 concurrent clients against the tiny model, continuous batching vs none.

    python benchmarks/bench_serve.py [--seconds 60] [--clients 16] [--max-tokens 32]

Builds a randomly initialised Ying-VLM at the tiny preset's real size (a random model costs the same
per token as a trained one), deploys the Serve app on a local Ray cluster and runs, side by side:

1. batched: ``serve.max_batch_size=16``, 16 clients sending valid chat requests for ``--seconds``;
2. unbatched: the same with ``serve.max_batch_size=1``. Both apps stay deployed and take turns in
   15 s windows, so background load on a shared machine weighs on both alike;
3. streamed: batched, every chat streamed (SSE); time to each answer's first token;
4. mixed: batched, one request in three malformed (a truncated JPEG, bad base64, too many images):
   good answers must keep coming and no request may get a 5xx.

First it measures the ceiling: the model alone, in this process, CPU time of one batch of 16 vs the
same 16 requests one at a time, prompts encoded beforehand (``model_alone_batch_speedup_16``).
Under load it prints the histogram of rows per decoding step (how full the batch ran) and the CPU
time each Serve process (``proc_tree``) spends per answered request, which background load cannot
inflate as much as wall time.

Every request asks for exactly ``--max-tokens`` tokens (``stop`` never matches a random model's
output often enough to matter; ``finish_reason`` is counted). The last line is JSON with
``batching_speedup_16`` (goal >= 4), ``errors_5xx`` (goal 0), ``p99_ms`` (batched) and
``ttft_p50_ms``/``ttft_p99_ms`` (streamed).
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

from proc_tree import TreeSampler  # benchmarks/ is on sys.path when this file runs as a script

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


async def _streamed(client: httpx.AsyncClient, body: dict) -> tuple[int, float | None, str | None]:
    """One streamed chat: (status, seconds to the first token's text, finish_reason)."""
    t = time.perf_counter()
    first, reason = None, None
    async with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        if r.status_code != 200:
            await r.aread()
            return r.status_code, None, None
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[6:]).get("choices") or [{}]
            if first is None and (choices[0].get("delta") or {}).get("content"):
                first = time.perf_counter() - t
            reason = choices[0].get("finish_reason") or reason
    # An answer that is empty (EOS first) has no text to wait for: its first token is its end.
    return 200, first if first is not None else time.perf_counter() - t, reason


async def _load(url: str, seconds: float, clients: int, max_tokens: int, bad_every: int = 0,
                stream: bool = False) -> dict:
    """``clients`` loops sending requests for ``seconds``; latencies of good answers, status counts.
    ``stream``: streamed chats, and ``ttft`` holds each good answer's time to its first token."""
    good = [_body(i, max_tokens) for i in range(8)]
    bad = _bad_bodies(max_tokens)
    latencies: list[float] = []
    ttft: list[float] = []
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
                    if stream:
                        code, first, reason = await _streamed(client, body)
                    else:
                        r = await client.post("/v1/chat/completions", json=body)
                        code = r.status_code
                        reason = r.json()["choices"][0]["finish_reason"] if code == 200 else None
                except httpx.HTTPError:
                    code = 599  # no answer at all counts as a server failure
                statuses[code] = statuses.get(code, 0) + 1
                if code == 200 and not is_bad:
                    latencies.append(time.perf_counter() - t)
                    lengths[reason] = lengths.get(reason, 0) + 1
                    if stream:
                        ttft.append(first)

        started = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(clients)))
        elapsed = time.perf_counter() - started
    return {"latencies": latencies, "ttft": ttft, "good": len(latencies), "elapsed": elapsed,
            "statuses": dict(sorted(statuses.items())), "finish_reasons": lengths,
            "errors_5xx": sum(n for code, n in statuses.items() if code >= 500)}


def _roles(app: str) -> dict[str, tuple[str, ...]]:
    """An app's Serve processes by role (``proc_tree.kind`` prefixes), to charge CPU time per request
    (what load on the machine can't hide). The proxy is shared by both apps: its time is charged to
    the app under load."""
    return {"model": (f"ServeReplica:{app}:YingModel",), "ingress": (f"ServeReplica:{app}:YingIngress",),
            "proxy": ("ProxyActor",)}


def _cpu_by_role(sampler: TreeSampler, app: str) -> dict[str, float]:
    out = {role: sampler.cpu_of(*prefixes) for role, prefixes in _roles(app).items()}
    out["client"] = sampler.cpu_by_pid.get(os.getpid(), 0.0)  # this process: the 16 HTTP clients
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


def _engine_speedup(ckpt: str, clients: int, max_tokens: int, repeats: int = 3) -> dict:
    """The model alone, in this process, in CPU time: one batch of ``clients`` requests vs the same
    requests one at a time. The prompts are encoded beforehand (the Serve ingress does it), so this
    is model work only: the most batching can gain on this machine. Best of ``repeats``."""
    import torch

    from ying.serve.engine import GenerationRequest, load_engine

    torch.set_num_threads(1)  # as the model replica (serve.num_cpus_per_replica < 2)
    engine = load_engine(ckpt, "tiny", device="cpu")
    reqs = [GenerationRequest(images=[_png((i * 15 % 255, 40, 90))], instruction="Answer the question.",
                              inputs=f"What color is shape {i}?", max_new_tokens=max_tokens) for i in range(clients)]
    for r in reqs:
        r.prompt = engine.preparer.prepare(r)
    engine.generate(reqs[:2])
    one_by_one = batched = float("inf")
    for _ in range(repeats):
        t = time.process_time()
        for r in reqs:
            engine.generate([r])
        one_by_one = min(one_by_one, time.process_time() - t)
        t = time.process_time()
        out = engine.generate(reqs)
        batched = min(batched, time.process_time() - t)
    tokens = sum(r.completion_tokens for r in out)
    print(f"model alone: {1000 * one_by_one / clients:.1f} CPU ms per request one at a time, "
          f"{1000 * batched / clients:.1f} in a batch of {clients} ({tokens} tokens in the batch)", flush=True)
    return {"speedup": one_by_one / batched, "cpu_ms_single": 1000 * one_by_one / clients,
            "cpu_ms_batched": 1000 * batched / clients}


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
    alone = _engine_speedup(ckpt, args.clients, args.max_tokens)
    engine_speedup = alone["speedup"]
    print(f"model alone (CPU time, one thread): a batch of {args.clients} costs {engine_speedup:.1f}x less per "
          "request than one at a time: the ceiling of batching_speedup_16", flush=True)
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
    stats_before = {name: _batch_stats(serve, app) for name, app in apps.items()}
    rounds = max(1, int(args.seconds // 15))
    totals: dict[str, dict] = {}
    for i in range(rounds):
        for name in ("batched", "unbatched"):
            with TreeSampler(every_s=1.0) as sampler:
                r = asyncio.run(_load(urls[name], args.seconds / rounds, args.clients, args.max_tokens))
            cpu = _cpu_by_role(sampler, apps[name])
            t = totals.setdefault(name, {"latencies": [], "good": 0, "statuses": {}, "errors_5xx": 0,
                                         "finish_reasons": {}, "cpu": {k: 0.0 for k in cpu}})
            t["latencies"] += r.pop("latencies")
            t["good"] += r["good"]
            t["errors_5xx"] += r["errors_5xx"]
            for k, v in r["statuses"].items():
                t["statuses"][k] = t["statuses"].get(k, 0) + v
            for k, v in r["finish_reasons"].items():
                t["finish_reasons"][k] = t["finish_reasons"].get(k, 0) + v
            for k in cpu:
                t["cpu"][k] += cpu[k]
            print(f"round {i + 1}/{rounds} {name}: {r['good'] / (args.seconds / rounds):.1f} good req/s", flush=True)
    results = {name: _summary(t, args.seconds) for name, t in totals.items()}
    for name, app in apps.items():
        stats = _batch_stats(serve, app, stats_before[name])
        results[name]["mean_batch_size"] = stats["mean_rows_per_step"]
        results[name]["rows_per_step"] = stats["rows_per_step"]
        results[name]["prefills"] = stats["prefills"]
    for name, batch in (("batched", 16), ("unbatched", 1)):
        _print(name, batch, args.clients, results[name])
    print("rows per decoding step (batched), a histogram: " + "  ".join(
        f"{k}:{v}" for k, v in results["batched"]["rows_per_step"].items()), flush=True)
    print("requests joining per prefill (batched): " + "  ".join(
        f"{k}:{v}" for k, v in results["batched"]["prefills"].items()), flush=True)
    delete_app("b1")
    side_seconds = max(15.0, args.seconds / 2)
    # Streamed chats on the batched app: time to the first token.
    with TreeSampler(every_s=1.0) as sampler:
        r = asyncio.run(_load(urls["batched"], side_seconds, args.clients, args.max_tokens, stream=True))
    r["cpu"] = _cpu_by_role(sampler, "b16")
    ttft = sorted(r.pop("ttft"))
    results["streamed"] = _summary(r, side_seconds)
    results["streamed"]["ttft_p50_ms"], results["streamed"]["ttft_p99_ms"] = _pct(ttft, 0.5), _pct(ttft, 0.99)
    _print("streamed", 16, args.clients, results["streamed"])
    print(f"streamed: time to first token p50 {results['streamed']['ttft_p50_ms']:.1f} ms, "
          f"p99 {results['streamed']['ttft_p99_ms']:.1f} ms", flush=True)
    with TreeSampler(every_s=1.0) as sampler:
        r = asyncio.run(_load(urls["batched"], side_seconds, args.clients, args.max_tokens, bad_every=3))
    r["cpu"] = _cpu_by_role(sampler, "b16")
    results["mixed"] = _summary(r, side_seconds)
    _print("mixed", 16, args.clients, results["mixed"])
    delete_app("b16")
    ray.shutdown()
    speedup = results["batched"]["good_rps"] / results["unbatched"]["good_rps"]
    print(f"batching speedup at {args.clients} clients: {speedup:.2f}x (the model alone: {engine_speedup:.2f}x, "
          f"{speedup / engine_speedup:.0%} of it); mixed traffic (1 in 3 malformed) keeps "
          f"{results['mixed']['good_rps'] / results['batched']['good_rps']:.0%} of the good throughput")
    print(json.dumps({
        "batching_speedup_16": round(speedup, 2),
        "errors_5xx": sum(r["errors_5xx"] for r in results.values()),
        "p99_ms": round(results["batched"]["p99_ms"], 1),
        "p50_ms": round(results["batched"]["p50_ms"], 1),
        "ttft_p50_ms": round(results["streamed"]["ttft_p50_ms"], 1),
        "ttft_p99_ms": round(results["streamed"]["ttft_p99_ms"], 1),
        "rps_batched": round(results["batched"]["good_rps"], 1),
        "rps_unbatched": round(results["unbatched"]["good_rps"], 1),
        "rps_streamed": round(results["streamed"]["good_rps"], 1),
        "p50_ms_unbatched": round(results["unbatched"]["p50_ms"], 1),
        "p99_ms_unbatched": round(results["unbatched"]["p99_ms"], 1),
        "mixed_good_rps": round(results["mixed"]["good_rps"], 1),
        "mixed_statuses": results["mixed"]["statuses"],
        "model_alone_batch_speedup_16": round(engine_speedup, 2),
        "model_alone_cpu_ms_per_request": {"single": round(alone["cpu_ms_single"], 1),
                                           "batch_16": round(alone["cpu_ms_batched"], 1)},
        "mean_batch_size": results["batched"]["mean_batch_size"],
        "rows_per_step_batched": results["batched"]["rows_per_step"],
        "cpu_ms_per_request_batched": results["batched"]["cpu_ms_per_request"],
        "cpu_ms_per_request_unbatched": results["unbatched"]["cpu_ms_per_request"],
        "clients": args.clients, "seconds": args.seconds, "max_tokens": args.max_tokens,
        "batch_wait_timeout_s": batch_wait, "load_average_1m": round(os.getloadavg()[0], 1),
    }))


def _batch_stats(serve, app: str, since: dict | None = None) -> dict:
    """The model replica's batching counters (minus ``since``'s: the warm-up's)."""
    stats = serve.get_deployment_handle("YingModel", app_name=app).batch_stats.remote().result()
    if since is None:
        return stats
    rows = {k: v - since["rows_per_step"].get(k, 0) for k, v in stats["rows_per_step"].items()}
    rows = {k: v for k, v in sorted(rows.items(), key=lambda kv: int(kv[0])) if v}
    prefills = {k: v - since["prefills"].get(k, 0) for k, v in stats["prefills"].items()}
    prefills = {k: v for k, v in sorted(prefills.items(), key=lambda kv: int(kv[0])) if v}
    steps = sum(rows.values())
    return {"rows_per_step": rows, "prefills": prefills,
            "mean_rows_per_step": round(sum(int(k) * v for k, v in rows.items()) / max(1, steps), 2)}


def _pct(values: list[float], p: float) -> float:
    return 1000 * values[min(len(values) - 1, int(p * len(values)))] if values else float("nan")


def _summary(t: dict, seconds: float) -> dict:
    lat = sorted(t["latencies"])
    n = max(1, t["good"])
    return {"good_rps": t["good"] / seconds, "p50_ms": _pct(lat, 0.5), "p99_ms": _pct(lat, 0.99), "statuses": t["statuses"],
            "finish_reasons": t["finish_reasons"], "errors_5xx": t["errors_5xx"],
            "cpu_ms_per_request": {k: round(1000 * v / n, 1) for k, v in t["cpu"].items()}}


def _print(name: str, batch: int, clients: int, r: dict) -> None:
    print(f"{name:9s} max_batch_size={batch:2d} clients={clients} {r['good_rps']:6.1f} good req/s  "
          f"p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  statuses {r['statuses']}  "
          f"finish {r['finish_reasons']}  mean batch {r.get('mean_batch_size', '-')}  "
          f"CPU ms per good request {r['cpu_ms_per_request']}", flush=True)


if __name__ == "__main__":
    main()
