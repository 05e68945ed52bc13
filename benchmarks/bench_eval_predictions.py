"""Benchmark of evaluation predictions (ying.eval.predictors), side by side on the same examples.

    python benchmarks/bench_eval_predictions.py                     # default: 256 examples, 2 CPUs
    python benchmarks/bench_eval_predictions.py --n 16 --batch-size 8   # smoke test, under a minute

A randomly initialised tiny-preset Ying checkpoint answers ``--n`` synthetic image questions four
ways, each timed in this one run:

  in_process        one plain process: YingPredictor.generate over batches (the skeleton's way)
  ray_1_actor       predict_examples on Ray Data with one model actor
  ray_N_actors      the same with --actors actors (the eval stage's ``eval.num_actors``)
  cached_rerun      cached_predictions a second time: every answer from the cache, no model loaded

It prints each one's examples/s and its ratio to in_process, then one JSON line with them.
``ray.init`` is outside the timers; actor start-up and model loading are inside, as in the stage.
Absolute figures depend on what else runs on the machine; run it alone for figures you report.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import tempfile
import time


def _jpeg(rng: random.Random) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), tuple(rng.randrange(256) for _ in range(3))).save(buf, format="JPEG")
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256, help="examples to answer")
    ap.add_argument("--batch-size", type=int, default=32, help="examples per generate call / Ray Data batch")
    ap.add_argument("--actors", type=int, default=2, help="model actors for the ray_N_actors run")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    args = ap.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    import torch

    from ying.config import load_config
    from ying.eval.predictors import ModelSpec, cached_predictions, example_key, predict_examples
    from ying.model.checkpoint import save_checkpoint
    from ying.model.inference import YingPredictor
    from ying.model.tokenizer import build_tokenizer
    from ying.model.vlm import build_model

    cfg = load_config("tiny")
    work = tempfile.mkdtemp(prefix="bench-eval-")
    ckpt = os.path.join(work, "ckpt")
    tok = build_tokenizer(cfg.model.tokenizer)
    save_checkpoint(build_model(cfg.model, tok, seed=0), tok, cfg.model, ckpt, {"stage": "bench"})
    rng = random.Random(0)
    examples = []
    for i in range(args.n):
        e = {"images": [_jpeg(rng)], "instruction": "Answer the question about the image.",
             "inputs": f"What color is shape {i}?", "chinese_dialogue": False, "max_new_tokens": args.max_new_tokens}
        examples.append(dict(e, key=example_key(e)))
    print(f"[bench] {args.n} examples, batch {args.batch_size}, max_new_tokens {args.max_new_tokens}", flush=True)

    figures: dict[str, float] = {}
    t = time.perf_counter()
    torch.set_num_threads(1)  # as in each actor, so the comparison is per-core work, not thread count
    predictor = YingPredictor.from_checkpoint(ckpt)
    for i in range(0, len(examples), args.batch_size):
        predictor.generate(examples[i : i + args.batch_size], max_new_tokens=args.max_new_tokens)
    figures["in_process"] = args.n / (time.perf_counter() - t)
    print(f"[bench] in_process: {figures['in_process']:.1f} examples/s", flush=True)

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    spec = ModelSpec("bench", "ying", ckpt)
    for name, actors in (("ray_1_actor", 1), (f"ray_{args.actors}_actors", args.actors)):
        t = time.perf_counter()
        predict_examples(spec, examples, batch_size=args.batch_size, num_actors=actors,
                         max_new_tokens=args.max_new_tokens)
        figures[name] = args.n / (time.perf_counter() - t)
        print(f"[bench] {name}: {figures[name]:.1f} examples/s", flush=True)
    cache = os.path.join(work, "cache")
    cached_predictions(spec, {"bench": examples}, cache, batch_size=args.batch_size, num_actors=args.actors,
                       max_new_tokens=args.max_new_tokens)
    t = time.perf_counter()
    _, stats = cached_predictions(spec, {"bench": examples}, cache, batch_size=args.batch_size,
                                  max_new_tokens=args.max_new_tokens)
    figures["cached_rerun"] = args.n / (time.perf_counter() - t)
    assert stats["generated"] == 0, stats
    ray.shutdown()

    base = figures["in_process"]
    for name, v in figures.items():
        print(f"{name:>16}: {v:10.1f} examples/s   x{v / base:.2f} of in_process")
    print(json.dumps({"n": args.n, "examples_per_s": figures,
                      "ratio_to_in_process": {k: v / base for k, v in figures.items()}}))


if __name__ == "__main__":
    main()
