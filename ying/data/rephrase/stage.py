"""The rephrase stage on Ray Data: an actor pool of async clients, one cluster-wide limiter, a durable cache.

``<in_dir>/records/<split>/*.parquet`` -> ``<out_dir>/records/<split>/``. Rows of tasks in
``cfg.tasks`` are rewritten; all others pass through unchanged (read = written for every split).

Each actor runs one asyncio loop (in a thread) with one ``openai.AsyncOpenAI`` client, and up to
``cfg.batches_in_flight_per_actor`` batches at once, so many requests are in flight per actor and a
slow retry holds up one batch, not the actor. Every actor books each request with the one
``RateLimiterActor``. Outcomes go to the cache as they arrive (see ``cache.py``); a row whose prompt is
cached sends nothing. A driver thread prints progress with the current request rate.

Context (paper Appendix C): captions for ``cfg.caption_tasks`` (VQA v2) come from COCO by the record's
``meta.image_id``: from ``cfg.coco_captions_file`` (COCO ``captions_*.json``) when set, else from the
run's own ``coco`` records (``meta.cocoid`` -> ``outputs``), first ``cfg.captions_per_image`` per
image; A-OKVQA's ``meta.rationales`` and scene-text tasks' ``meta.ocr_tokens`` are read from meta.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import Counter, defaultdict
from typing import Any

import pyarrow as pa

from ying import storage
from ying.config import RephraseConfig
from ying.data.rephrase.cache import CacheWriter, cache_key, load_cache
from ying.data.rephrase.limiter import RateBudget, RateLimiterActor
from ying.data.rephrase.prompt import RephraseItem, RephraseResult, build_prompt, context_from_meta, prompt_sha256
from ying.data.rephrase.providers import (
    ActorLimiter,
    LLMClient,
    OpenAIProvider,
    Outcome,
    Recorder,
    RephraseProvider,
    judge,
    make_provider,
)
from ying.data.schema import RECORD_SCHEMA, SPLITS

__all__ = ["rephrase_rows", "rephrase_records", "load_coco_captions", "item_for_row"]

log = logging.getLogger(__name__)


def item_for_row(row: dict[str, Any], captions: dict[int, list[str]] | None, caption_tasks: set[str],
                 per_image: int) -> tuple[RephraseItem, dict[str, Any], str]:
    meta = json.loads(row["meta"] or "{}")
    answer = meta.get("original_answer")
    if not isinstance(answer, str) or not answer.strip():
        answer = row["outputs"]
    image_captions = None
    if captions and row["task"] in caption_tasks and meta.get("image_id") is not None:
        try:
            image_captions = captions.get(int(meta["image_id"]), [])[:per_image] or None
        except (TypeError, ValueError):
            image_captions = None
    item = RephraseItem(question=row["inputs"] or "", answer=answer, lang=row["lang"],
                        context=context_from_meta(meta, image_captions))
    return item, meta, answer


def _with_result(row: dict[str, Any], meta: dict[str, Any], answer: str, result: RephraseResult,
                 provider: str, model: str, prompt_version: str) -> dict[str, Any]:
    meta["original_answer"] = answer
    meta["rephrase"] = {"status": result.status, "provider": provider, "model": model, "prompt_version": prompt_version}
    return {**row, "outputs": result.text, "meta": json.dumps(meta, ensure_ascii=False)}


def rephrase_rows(rows: list[dict[str, Any]], provider: RephraseProvider, tasks: set[str],
                  captions: dict[int, list[str]] | None = None, caption_tasks: set[str] = frozenset({"vqa-v2"}),
                  captions_per_image: int = 2) -> list[dict[str, Any]]:
    """Record dicts in, record dicts out; only rows whose task is in ``tasks`` are rewritten (no cache)."""
    picked, items = [], []
    for i, row in enumerate(rows):
        if row["task"] in tasks:
            item, meta, answer = item_for_row(row, captions, caption_tasks, captions_per_image)
            picked.append((i, meta, answer))
            items.append(item)
    results = provider.rephrase(items) if items else []
    out = list(rows)
    for (i, meta, answer), result in zip(picked, results):
        out[i] = _with_result(rows[i], meta, answer, result, provider.name, provider.model, provider.prompt_version)
    return out


def _template_table(table: pa.Table, provider: RephraseProvider, tasks: list[str]) -> pa.Table:
    return pa.Table.from_pylist(rephrase_rows(table.to_pylist(), provider, set(tasks)), schema=RECORD_SCHEMA)


class _RephraseActor:
    """One event loop, one HTTP client, one cache writer per actor; batches may run concurrently."""

    def __init__(self, cfg: dict[str, Any], limiter, cache_ref, captions_ref, cache_dir: str) -> None:
        import ray

        self.cfg = RephraseConfig.model_validate(cfg)
        self.tasks = set(self.cfg.tasks)
        self.caption_tasks = set(self.cfg.caption_tasks)
        self.limiter_handle = limiter
        # Refs arrive wrapped in a list so Ray passes the ref, not the (possibly large) value, to __init__.
        self.cache: dict[str, dict] = ray.get(cache_ref[0])
        self.captions: dict[int, list[str]] = ray.get(captions_ref[0])
        self.writer = CacheWriter(cache_dir, self.cfg.cache_flush_every)
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="rephrase-loop", daemon=True).start()
        self.recorder = Recorder(emit_metrics=True)
        self.client = asyncio.run_coroutine_threadsafe(self._make_client(), self.loop).result()
        self.sem = asyncio.run_coroutine_threadsafe(self._make_sem(), self.loop).result()
        self.in_flight: dict[str, asyncio.Future] = {}

    async def _make_client(self) -> LLMClient:
        return LLMClient(self.cfg, ActorLimiter(self.limiter_handle), self.recorder)

    async def _make_sem(self) -> asyncio.Semaphore:
        return asyncio.Semaphore(self.cfg.max_concurrency)

    async def _outcome(self, prompt: str, task: str, item: RephraseItem) -> Outcome:
        sha = prompt_sha256(prompt)
        key = cache_key(self.cfg.model, self.cfg.prompt_version, sha)
        entry = self.cache.get(key)
        if entry is not None:
            cached = Outcome(text=entry.get("text"), error=entry.get("error"))
            if not (self.cfg.retry_failed and judge(cached, item).status.startswith("fallback:")):
                self.recorder.cache_hit(task)
                return cached
        if key in self.in_flight:  # the same prompt twice in flight: pay once
            return await asyncio.shield(self.in_flight[key])
        future = self.loop.create_future()
        self.in_flight[key] = future
        try:
            async with self.sem:
                outcome = await self.client.complete(prompt, task)
            if not outcome.budget:
                self.writer.add(key, self.cfg.model, self.cfg.prompt_version, sha, outcome.text, outcome.error,
                                outcome.prompt_tokens, outcome.completion_tokens)
                self.cache[key] = {"text": outcome.text, "error": outcome.error}
            future.set_result(outcome)
            return outcome
        except BaseException as err:
            future.set_exception(err)
            raise
        finally:
            del self.in_flight[key]

    async def _rephrase(self, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], Counter]:
        jobs, picked = [], []
        for i, row in enumerate(rows):
            if row["task"] not in self.tasks:
                continue
            item, meta, answer = item_for_row(row, self.captions, self.caption_tasks, self.cfg.captions_per_image)
            picked.append((i, item, meta, answer))
            jobs.append(self._outcome(build_prompt(item), row["task"], item))
        outcomes = await asyncio.gather(*jobs)
        out, by_status = list(rows), Counter()
        for (i, item, meta, answer), outcome in zip(picked, outcomes):
            result = judge(outcome, item)
            by_status[result.status] += 1
            out[i] = _with_result(rows[i], meta, answer, result, "openai", self.cfg.model, self.cfg.prompt_version)
        self.writer.flush()
        return out, by_status

    def __call__(self, table: pa.Table) -> pa.Table:
        rows = table.to_pylist()
        out, by_status = asyncio.run_coroutine_threadsafe(self._rephrase(rows), self.loop).result()
        tally = asyncio.run_coroutine_threadsafe(self._take_tally(), self.loop).result()
        tally["by_status"] = dict(by_status)
        tally["counts"]["rows"] = sum(by_status.values())
        import ray

        ray.get(self.limiter_handle.add_tally.remote(tally))
        return pa.Table.from_pylist(out, schema=RECORD_SCHEMA)

    async def _take_tally(self) -> dict[str, Any]:
        return self.recorder.take()  # on the loop thread, where the recorder is written


def _arrow_fs(path: str):
    """(pyarrow filesystem, path, fsspec filesystem) for a local path or fsspec URL."""
    import pyarrow.fs as pafs
    from fsspec.implementations.local import LocalFileSystem

    fs, p = storage.filesystem(path)
    if isinstance(fs, LocalFileSystem):
        return pafs.LocalFileSystem(), p, fs
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), p, fs


def _parquet_files(fs, path: str) -> list[str]:
    if not fs.exists(path):
        return []
    return sorted(f for f in fs.find(path) if f.endswith(".parquet"))


def _read_columns(fs, files: list[str], columns: list[str]):
    import pyarrow.parquet as pq

    for f in files:
        with fs.open(f, "rb") as fh:
            yield f, pq.read_table(fh, columns=columns)


def load_coco_captions(cfg: RephraseConfig, in_dir: str) -> dict[int, list[str]]:
    """COCO image id -> captions (at most ``cfg.captions_per_image``), for the Caption line of VQA v2 prompts."""
    captions: dict[int, list[str]] = defaultdict(list)
    k = cfg.captions_per_image
    if cfg.coco_captions_file:
        data = storage.read_json(cfg.coco_captions_file)
        annotations = data.get("annotations") if isinstance(data, dict) else None
        if not isinstance(annotations, list):
            raise ValueError(f"rephrase.coco_captions_file {cfg.coco_captions_file}: expected a COCO captions "
                             f"file with an 'annotations' list of {{image_id, caption}}")
        for ann in annotations:
            if isinstance(ann, dict) and isinstance(ann.get("caption"), str) and len(captions[ann.get("image_id")]) < k:
                captions[int(ann["image_id"])].append(ann["caption"].strip())
        return dict(captions)
    for split in SPLITS:
        _, path, fs = _arrow_fs(storage.join(in_dir, "records", split))
        for _, table in _read_columns(fs, _parquet_files(fs, path), ["task", "outputs", "meta"]):
            for task, text, meta in zip(*(table.column(c).to_pylist() for c in ("task", "outputs", "meta"))):
                if task != "coco":
                    continue
                cocoid = json.loads(meta or "{}").get("cocoid")
                if cocoid is not None and len(captions[int(cocoid)]) < k:
                    captions[int(cocoid)].append(text.strip())
    return dict(captions)


class _Progress(threading.Thread):
    """Prints rows done, the current request rate against the cap, cache hits, failures and tokens."""

    def __init__(self, limiter, total_rows: int, cfg: RephraseConfig) -> None:
        super().__init__(name="rephrase-progress", daemon=True)
        self.limiter, self.total, self.cfg = limiter, total_rows, cfg
        self.stop_event = threading.Event()

    def run(self) -> None:
        import ray

        while not self.stop_event.wait(self.cfg.progress_interval_s):
            try:
                s = ray.get(self.limiter.stats.remote(), timeout=5)
            except Exception:  # progress is best effort; the stage does not depend on it
                continue
            c = s["counts"]
            cap = f" (cap {self.cfg.rpm:.0f}/min)" if self.cfg.rpm else ""
            print(f"[ying] rephrase: {c.get('rows', 0)}/{self.total} rows, {s['rate_per_s'] * 60:.0f} requests/min"
                  f"{cap}, {c.get('requests', 0)} requests, {c.get('cache_hits', 0)} cache hits, failures "
                  f"{s['failures']}, tokens {c.get('prompt_tokens', 0)} in / {c.get('completion_tokens', 0)} out",
                  flush=True)


def _count(fs, files: list[str], tasks: set[str], counts: dict[str, Any]) -> None:
    for f, table in _read_columns(fs, files, ["task", "meta"]):
        for task, meta in zip(table.column("task").to_pylist(), table.column("meta").to_pylist()):
            if task not in tasks:
                counts["untouched"] += 1
                continue
            status = json.loads(meta)["rephrase"]["status"]
            counts["by_status"][status] += 1
            counts["fallback" if status.startswith("fallback:") else "rephrased"] += 1


def rephrase_records(cfg: RephraseConfig, in_dir: str, out_dir: str) -> dict[str, Any]:
    """Ray Data stage: ``<in_dir>/records/<split>/*.parquet`` -> ``<out_dir>/records/<split>/``.

    Returns the stage's totals: ``rephrased`` (status ``rephrased`` or ``template``), ``fallback``,
    ``untouched`` and ``by_status`` read back from the written rows, plus this run's ``requests``,
    ``cache_hits``, ``failures`` (failed attempts by kind, retried or not), ``prompt_tokens``,
    ``completion_tokens`` and ``requests_per_min``.
    """
    import ray
    import ray.data

    provider = make_provider(cfg)  # fail on a bad config before any data moves
    tasks = list(cfg.tasks)
    counts: dict[str, Any] = {"rephrased": 0, "fallback": 0, "untouched": 0, "by_status": Counter(),
                              "requests": 0, "cache_hits": 0, "failures": {}, "prompt_tokens": 0,
                              "completion_tokens": 0, "requests_per_min": 0.0}
    splits = []
    for split in SPLITS:
        src_fs, src_path, src_fsspec = _arrow_fs(storage.join(in_dir, "records", split))
        files = _parquet_files(src_fsspec, src_path)
        if files:
            splits.append((split, src_fs, src_fsspec, files))

    llm = isinstance(provider, OpenAIProvider)
    if llm:
        for name in ("actors", "batch_size", "batches_in_flight_per_actor"):
            if getattr(cfg, name) < 1:
                raise ValueError(f"rephrase.{name} must be >= 1, got {getattr(cfg, name)}")
        RateBudget(cfg.rpm, cfg.tpm, cfg.budget_tokens, cfg.burst_s)  # a bad limit fails here, not in an actor
        cache_dir = cfg.cache_dir or storage.join(out_dir, "cache")
        cache = load_cache(cache_dir, cfg.model, cfg.prompt_version)
        captions = load_coco_captions(cfg, in_dir) if set(cfg.caption_tasks) & set(tasks) else {}
        total = sum(sum(1 for t in table.column("task").to_pylist() if t in set(tasks))
                    for _, _, fs, files in splits for _, table in _read_columns(fs, files, ["task"]))
        log.info("rephrase: %d rows to rephrase, %d cached outcomes in %s, captions for %d images",
                 total, len(cache), cache_dir, len(captions))
        limiter = ray.remote(num_cpus=0)(RateLimiterActor).remote(cfg.rpm, cfg.tpm, cfg.budget_tokens, cfg.burst_s)
        # Every actor holds the cache dict (~150 bytes an entry): ~300 MB at 2M records. The key is a hash
        # of the prompt, so it cannot be split by actor without a shuffle; fine for a handful of actors.
        cache_ref, captions_ref = ray.put(cache), ray.put(captions)
        del cache
        progress = _Progress(limiter, total, cfg)
        progress.start()
    started = time.monotonic()
    try:
        for split, src_fs, _, files in splits:
            dst = storage.join(out_dir, "records", split)
            dst_fs, dst_path, dst_fsspec = _arrow_fs(dst)
            if dst_fsspec.exists(dst_path):  # a re-run replaces the split, never appends to it
                dst_fsspec.rm(dst_path, recursive=True)
            dst_fsspec.makedirs(dst_path, exist_ok=True)
            ds = ray.data.read_parquet(files, filesystem=src_fs, schema=RECORD_SCHEMA, partitioning=None)
            if llm:
                ds = ds.map_batches(
                    _RephraseActor,
                    fn_constructor_kwargs={"cfg": cfg.model_dump(mode="json"), "limiter": limiter,
                                           "cache_ref": [cache_ref], "captions_ref": [captions_ref],
                                           "cache_dir": cache_dir},
                    compute=ray.data.ActorPoolStrategy(
                        min_size=cfg.actors, max_size=cfg.actors,
                        max_concurrent_calls_per_actor=cfg.batches_in_flight_per_actor,
                        max_tasks_in_flight_per_actor=cfg.batches_in_flight_per_actor * 2),
                    batch_size=cfg.batch_size,
                    batch_format="pyarrow",
                    num_cpus=0.25,  # I/O bound: the work happens on the endpoint
                )
            else:
                ds = ds.map_batches(_template_table, fn_kwargs={"provider": provider, "tasks": tasks},
                                    batch_format="pyarrow")
            ds.write_parquet(dst_path, filesystem=dst_fs)
            _count(dst_fsspec, _parquet_files(dst_fsspec, dst_path), set(tasks), counts)
            log.info("rephrased split %s -> %s", split, dst)
        if llm:
            stats = ray.get(limiter.stats.remote())
            c = stats["counts"]
            for name in ("requests", "cache_hits", "prompt_tokens", "completion_tokens"):
                counts[name] = int(c.get(name, 0))
            counts["failures"] = stats["failures"]
            elapsed = max(time.monotonic() - started, 1e-9)
            counts["requests_per_min"] = round(counts["requests"] / elapsed * 60, 1)
            if cfg.budget_tokens is not None:
                counts["budget_tokens"] = cfg.budget_tokens
    finally:
        if llm:
            progress.stop_event.set()
            ray.kill(limiter)
    counts["by_status"] = dict(sorted(counts["by_status"].items()))
    return counts
