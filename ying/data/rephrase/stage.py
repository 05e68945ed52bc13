"""The rephrase stage: one Ray Data pipeline for every split, prompts routed to owner actors, one limiter, a cache.

``<in_dir>/records/<split>/*.parquet`` -> ``<out_dir>/records/<split>/``. Rows of tasks in
``cfg.tasks`` are rewritten; all others pass through unchanged (read = written for every split).

Who does what (all started once for the whole stage, whatever the number of splits):

- **Ray Data** reads every split's files in one pipeline and writes each row back into its split's
  folder (``ying.data.split_writer``). Its actor pool (``_Relay``, ``cfg.actors`` actors) builds each
  row's prompt (Table 10 plus context from meta and COCO captions), hands it to the prompt's owner
  and yields rows *as their answers arrive*: a row that is slow or retrying does not hold up its
  batch-mates, which go on to the writer while it waits.
- **Prompt owners** (``_PromptOwner``, ``cfg.actors`` async actors): every prompt's cache key
  (model, prompt version, temperature, max_tokens, endpoint and the prompt; ``cache.cache_key``) is
  routed by its hash to exactly one owner. The owner alone sends it, so no prompt is paid twice in a
  run however many actors there are: a second row with the same prompt waits for the answer in
  flight (``deduped``) or finds it in the owner's cache. The owner writes the outcome to the cache as
  it arrives, so each key has one writer, and holds only its own share of the cache in memory.
  Each keeps up to ``cfg.max_concurrency`` requests in flight through one async ``openai`` client.
- **The limiter** (``RateLimiterActor``): every request of every owner books its slot there
  (requests/min, tokens/min, Retry-After pauses, budgets in tokens and money). It also gathers the
  running tallies the driver prints as one progress line and returns at the end.

Context (paper Appendix C): captions for ``cfg.caption_tasks`` (VQA v2) come from COCO by the record's
``meta.image_id``: from ``cfg.coco_captions_file`` (COCO ``captions_*.json``) when set, else from the
run's own ``coco`` records (``meta.cocoid`` -> ``outputs``), first ``cfg.captions_per_image`` per
image; A-OKVQA's ``meta.rationales`` and scene-text tasks' ``meta.ocr_tokens`` are read from meta.

The prompt's "Answer:" is the record's target (``outputs``); a rewrite must carry the adapter's
``meta.original_answer`` (for multiple choice: the option's text). The template fallback is built from
the target. ``meta.original_answer`` is kept, and ``meta.rephrase`` says what happened.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import warnings
from collections import Counter, defaultdict
from typing import Any, Iterator

import pyarrow as pa

from ying import storage
from ying.config import RephraseConfig
from ying.data import records
from ying.data.rephrase.cache import CacheWriter, cache_key, cache_settings, load_cache, owner_of
from ying.data.rephrase.limiter import RateLimiterActor
from ying.data.rephrase.prompt import RephraseItem, RephraseResult, build_prompt, context_from_meta, prompt_sha256
from ying.data.rephrase.providers import (
    ActorLimiter,
    LLMClient,
    OpenAIProvider,
    Outcome,
    Recorder,
    RephraseProvider,
    budget_for,
    judge,
    limiter_args,
    make_provider,
)
from ying.data.schema import RECORD_SCHEMA, SPLITS
from ying.data.tasks import rephrased_tasks

__all__ = ["rephrase_rows", "rephrase_records", "load_coco_captions", "item_for_row", "settings_of"]

log = logging.getLogger(__name__)

_EMIT_EVERY_S = 0.5  # a batch yields the rows that finished at most this often


def settings_of(cfg: RephraseConfig) -> dict[str, Any]:
    """The cache settings of a config: what changes an answer (see ``cache.cache_settings``)."""
    return cache_settings(cfg.model, cfg.prompt_version, cfg.temperature, cfg.max_tokens, cfg.base_url)


def item_for_row(row: dict[str, Any], captions: dict[int, list[str]] | None, caption_tasks: set[str],
                 per_image: int) -> tuple[RephraseItem, dict[str, Any]]:
    meta = json.loads(row["meta"] or "{}")
    original = meta.get("original_answer")
    if not isinstance(original, str) or not original.strip():
        original = None
    image_captions = None
    if captions and row["task"] in caption_tasks and meta.get("image_id") is not None:
        try:
            image_captions = captions.get(int(meta["image_id"]), [])[:per_image] or None
        except (TypeError, ValueError):
            image_captions = None
    item = RephraseItem(question=row["inputs"] or "", answer=row["outputs"], lang=row["lang"],
                        context=context_from_meta(meta, image_captions), original=original)
    return item, meta


def _with_result(row: dict[str, Any], meta: dict[str, Any], item: RephraseItem, result: RephraseResult,
                 provider: str, model: str, prompt_version: str) -> dict[str, Any]:
    meta["original_answer"] = item.expected
    meta["rephrase"] = {"status": result.status, "provider": provider, "model": model, "prompt_version": prompt_version}
    return {**row, "outputs": result.text, "meta": json.dumps(meta, ensure_ascii=False)}


def rephrase_rows(rows: list[dict[str, Any]], provider: RephraseProvider, tasks: set[str],
                  captions: dict[int, list[str]] | None = None, caption_tasks: set[str] = frozenset({"vqa-v2"}),
                  captions_per_image: int = 2) -> list[dict[str, Any]]:
    """Record dicts in, record dicts out; only rows whose task is in ``tasks`` are rewritten (no cache)."""
    picked, items = [], []
    for i, row in enumerate(rows):
        if row["task"] in tasks:
            item, meta = item_for_row(row, captions, caption_tasks, captions_per_image)
            picked.append((i, meta, item))
            items.append(item)
    results = provider.rephrase(items) if items else []
    out = list(rows)
    for (i, meta, item), result in zip(picked, results):
        out[i] = _with_result(rows[i], meta, item, result, provider.name, provider.model, provider.prompt_version)
    return out


def _template_table(table: pa.Table, provider: RephraseProvider, tasks: list[str]) -> pa.Table:
    return pa.Table.from_pylist(rephrase_rows(table.to_pylist(), provider, set(tasks)), schema=RECORD_SCHEMA)


# -- the prompt owners ------------------------------------------------------------------------------


class _PromptOwner:
    """Owns the prompts whose key routes here: sends each once, caches its outcome, shares answers in flight."""

    def __init__(self, cfg: dict[str, Any], index: int, owners: int, limiter, cache_dir: str) -> None:
        self.cfg = RephraseConfig.model_validate(cfg)
        settings = settings_of(self.cfg)
        self.cache: dict[str, dict[str, Any]] = load_cache(cache_dir, settings, owner=(index, owners))
        self.writer = CacheWriter(cache_dir, settings, self.cfg.cache_flush_every)
        self.limiter = limiter
        self.recorder = Recorder(emit_metrics=True)
        self.in_flight: dict[str, asyncio.Future] = {}
        self.retried: set[str] = set()  # retry_failed: each fallback is sent again once per run
        self.client: LLMClient | None = None
        self.sem: asyncio.Semaphore | None = None
        self._last_push = time.monotonic()
        self.index = index
        self.pending = 0  # rows waiting for an answer here (queued, booked, in flight or retrying)

    def cached(self) -> int:
        return len(self.cache)

    def _fell_back(self, entry: dict[str, Any], expected: str, sources: str) -> bool:
        item = RephraseItem(question=sources, answer=expected)
        return judge(Outcome(text=entry.get("text"), error=entry.get("error")), item).status.startswith("fallback:")

    async def outcome(self, key: str, prompt: str, task: str, expected: str, sources: str) -> dict[str, Any]:
        self.pending += 1
        try:
            return await self._outcome(key, prompt, task, expected, sources)
        finally:
            self.pending -= 1

    async def _outcome(self, key: str, prompt: str, task: str, expected: str, sources: str) -> dict[str, Any]:
        if self.client is None:  # made on the actor's event loop
            self.client = LLMClient(self.cfg, ActorLimiter(self.limiter), self.recorder)
            self.sem = asyncio.Semaphore(self.cfg.max_concurrency)
        entry = self.cache.get(key)
        if entry is not None and not (self.cfg.retry_failed and key not in self.retried
                                      and self._fell_back(entry, expected, sources)):
            self.recorder.cache_hit(task)
            self._push_tally()
            return entry
        if key in self.in_flight:  # the same prompt is on its way: share its answer
            self.recorder.deduped(task)
            return await asyncio.shield(self.in_flight[key])
        future = asyncio.get_running_loop().create_future()
        self.in_flight[key] = future
        try:
            async with self.sem:
                outcome = await self.client.complete(prompt, task)
            result = {"text": outcome.text, "error": outcome.error, "prompt_tokens": outcome.prompt_tokens,
                      "completion_tokens": outcome.completion_tokens}
            if outcome.budget:  # never sent: not cached, so a later run with budget left sends it
                result["budget"] = True
            else:
                self.writer.add(key, prompt_sha256(prompt), outcome.text, outcome.error, outcome.prompt_tokens,
                                outcome.completion_tokens)
                self.cache[key] = result
                if self.cfg.retry_failed:
                    self.retried.add(key)
            future.set_result(result)
            return result
        except BaseException:
            future.cancel()
            raise
        finally:
            del self.in_flight[key]
            self._push_tally()

    def _push_tally(self, force: bool = False):
        now = time.monotonic()
        if not force and now - self._last_push < 1.0:
            return None
        self._last_push = now
        tally = self.recorder.take()
        tally["gauges"] = {f"pending_{self.index}": self.pending}
        return self.limiter.add_tally.remote(tally)

    async def finish(self) -> None:
        """Flush the cache and hand in the last tallies (awaited, so the driver's totals include them)."""
        self.writer.flush()
        await self._push_tally(force=True)


# -- the Ray Data side ----------------------------------------------------------------------------


class _Relay:
    """Ray Data actor: builds prompts, asks their owners, yields rows as their answers arrive."""

    def __init__(self, cfg: dict[str, Any], owners: list, limiter, captions_ref: list) -> None:
        import ray

        self.cfg = RephraseConfig.model_validate(cfg)
        self.tasks = set(rephrased_tasks(self.cfg.tasks))
        self.caption_tasks = set(self.cfg.caption_tasks)
        self.settings = settings_of(self.cfg)
        self.owners = owners
        self.limiter = limiter
        # The ref arrives wrapped in a list so Ray passes the ref, not the (possibly large) value, to __init__.
        self.captions: dict[int, list[str]] = ray.get(captions_ref[0])

    def __call__(self, table: pa.Table) -> Iterator[pa.Table]:
        import ray

        rows = table.to_pylist()
        untouched = [r for r in rows if r["task"] not in self.tasks]
        if untouched:
            yield pa.Table.from_pylist(untouched, schema=RECORD_SCHEMA)
        pending: dict[Any, tuple[dict, RephraseItem, dict]] = {}
        for row in rows:
            if row["task"] not in self.tasks:
                continue
            item, meta = item_for_row(row, self.captions, self.caption_tasks, self.cfg.captions_per_image)
            prompt = build_prompt(item)
            key = cache_key(self.settings, prompt)
            owner = self.owners[owner_of(key, len(self.owners))]
            pending[owner.outcome.remote(key, prompt, row["task"], item.expected, item.sources)] = (row, item, meta)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=_EMIT_EVERY_S)
            if not ready:
                continue
            out = []
            for ref, outcome in zip(ready, ray.get(ready)):
                row, item, meta = pending.pop(ref)
                budget = bool(outcome.get("budget"))
                result = judge(Outcome(text=outcome.get("text"), error=outcome.get("error"), budget=budget), item)
                out.append(_with_result(row, meta, item, result, "openai", self.cfg.model, self.cfg.prompt_version))
            self.limiter.add_tally.remote({"counts": {"rows": len(out)}})
            yield pa.Table.from_pylist(out, schema=RECORD_SCHEMA)


# -- inputs, context, progress, counts --------------------------------------------------------------


def _arrow_fs(fs):
    """The pyarrow filesystem of an fsspec one (Ray Data's reader takes pyarrow's)."""
    import pyarrow.fs as pafs
    from fsspec.implementations.local import LocalFileSystem

    if isinstance(fs, LocalFileSystem):
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


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
        for _, table in records.read_columns(in_dir, split, ["task", "outputs", "meta"]):
            for task, text, meta in zip(*(table.column(c).to_pylist() for c in ("task", "outputs", "meta"))):
                if task != "coco":
                    continue
                cocoid = json.loads(meta or "{}").get("cocoid")
                if cocoid is not None and len(captions[int(cocoid)]) < k:
                    captions[int(cocoid)].append(text.strip())
    return dict(captions)


def _progress_extra(stats: dict[str, Any], cfg: RephraseConfig) -> str:
    c = stats["counts"]
    cap = f" (cap {cfg.rpm:,.0f})" if cfg.rpm else ""
    failures = sum(stats["failures"].values())
    spend = f", ${stats['spent_usd']:.4f}" if stats.get("spent_usd") is not None else ""
    return (f"{stats['rate_per_s'] * 60:,.0f} requests/min{cap}, {c.get('requests', 0):,} requests, "
            f"{c.get('cache_hits', 0):,} cache hits, {c.get('deduped', 0):,} shared, {failures:,} failed attempts, "
            f"tokens {c.get('prompt_tokens', 0):,} in / {c.get('completion_tokens', 0):,} out{spend}, "
            f"{stats.get('pending', 0):,} answers awaited")


class _ProgressPoller(threading.Thread):
    """Polls the limiter's tallies and feeds one ProgressLine: answers done, rate, ETA, requests/min vs cap."""

    def __init__(self, limiter, total: int, cfg: RephraseConfig) -> None:
        from ying.progress import ProgressLine

        super().__init__(name="rephrase-progress", daemon=True)
        self.limiter, self.cfg = limiter, cfg
        self.stats: dict[str, Any] | None = None
        self.progress = ProgressLine("rephrase", total=total, unit="answers", interval_s=cfg.progress_interval_s,
                                     extra=lambda: _progress_extra(self.stats, cfg) if self.stats else "")
        self.stop_event = threading.Event()

    def run(self) -> None:
        import ray

        while not self.stop_event.wait(min(1.0, self.cfg.progress_interval_s)):
            try:
                self.stats = ray.get(self.limiter.stats.remote(), timeout=5)
            except Exception:  # progress is best effort; the stage does not depend on it
                continue
            self.progress.set(int(self.stats["counts"].get("rows", 0)))

    def finish(self, stats: dict[str, Any]) -> None:
        self.stop_event.set()
        self.join(timeout=5)
        self.stats = stats
        self.progress.set(int(stats["counts"].get("rows", 0)))
        self.progress.finish()


def _count(out_dir: str, split: str, tasks: set[str], counts: dict[str, Any]) -> None:
    for _, table in records.read_columns(out_dir, split, ["task", "meta"]):
        for task, meta in zip(table.column("task").to_pylist(), table.column("meta").to_pylist()):
            if task not in tasks:
                counts["untouched"] += 1
                continue
            status = json.loads(meta)["rephrase"]["status"]
            counts["by_status"][status] += 1
            counts["fallback" if status.startswith("fallback:") else "rephrased"] += 1


# -- the stage ---------------------------------------------------------------------------------------


def _start_actors(cfg: RephraseConfig, cache_dir: str):
    import ray

    limiter = ray.remote(num_cpus=0)(RateLimiterActor).remote(**limiter_args(cfg))
    owner_cls = ray.remote(num_cpus=0, max_concurrency=100_000)(_PromptOwner)
    cfg_json = cfg.model_dump(mode="json")
    owners = [owner_cls.remote(cfg_json, i, cfg.actors, limiter, cache_dir) for i in range(cfg.actors)]
    return limiter, owners


def rephrase_records(cfg: RephraseConfig, in_dir: str, out_dir: str) -> dict[str, Any]:
    """Ray Data stage: ``<in_dir>/records/<split>/*.parquet`` -> ``<out_dir>/records/<split>/``.

    Returns the stage's totals: ``rephrased`` (status ``rephrased`` or ``template``), ``fallback``,
    ``untouched`` and ``by_status`` read back from the written rows, plus this run's ``requests``
    (sent, failed ones included), ``cache_hits``, ``deduped`` (rows that shared an answer in flight),
    ``failures`` (failed attempts by kind, retried or not), ``prompt_tokens``, ``completion_tokens``,
    ``spent_usd`` (when the model has a price) and ``requests_per_min``.
    """
    import ray
    import ray.data
    from ray.util.debug import log_once

    from ying.data.split_writer import write_split_records

    provider = make_provider(cfg)  # fail on a bad config before any data moves
    tasks = rephrased_tasks(cfg.tasks)
    counts: dict[str, Any] = {"rephrased": 0, "fallback": 0, "untouched": 0, "by_status": Counter(),
                              "requests": 0, "cache_hits": 0, "deduped": 0, "failures": {}, "prompt_tokens": 0,
                              "completion_tokens": 0, "requests_per_min": 0.0}
    files: list[str] = []
    for split in SPLITS:
        fsspec_in, split_files = records.list_files(in_dir, split)
        files += split_files
    records.clear_records(out_dir)  # a re-run replaces every split, never appends to one
    if not files:
        counts["by_status"] = {}
        return counts

    llm = isinstance(provider, OpenAIProvider)
    if llm:
        for name in ("actors", "batch_size", "batches_in_flight_per_actor", "max_concurrency"):
            if getattr(cfg, name) < 1:
                raise ValueError(f"rephrase.{name} must be >= 1, got {getattr(cfg, name)}")
        budget_for(cfg)  # a bad limit fails here, not in an actor
    data_ctx = ray.data.DataContext.get_current()
    bars = data_ctx.enable_progress_bars
    data_ctx.enable_progress_bars = False  # our own progress line instead of bars with control codes
    # The rows come out in the order they went in, whichever actor answers first: the same inputs
    # write the same files, so training (which orders records by seed over the files' rows) repeats.
    ordered = data_ctx.execution_options.preserve_order
    data_ctx.execution_options.preserve_order = True
    log_once("ray_data_progress_manager_disabled")  # so Ray does not warn that we turned them off
    started = time.monotonic()
    limiter = owners = poller = None
    try:
        ds = ray.data.read_parquet(files, filesystem=_arrow_fs(fsspec_in), schema=RECORD_SCHEMA, partitioning=None)
        if llm:
            cache_dir = cfg.cache_dir or storage.join(out_dir, "cache")
            limiter, owners = _start_actors(cfg, cache_dir)  # they start and load the cache meanwhile
            captions = load_coco_captions(cfg, in_dir) if set(cfg.caption_tasks) & set(tasks) else {}
            wanted = set(tasks)
            total = sum(n for split in SPLITS for t, n in records.task_counts(in_dir, split).items() if t in wanted)
            cached = sum(ray.get([o.cached.remote() for o in owners]))
            log.info("rephrase: %d answers to rephrase, %d cached outcomes in %s, %d prompt owners, captions for "
                     "%d images", total, cached, cache_dir, len(owners), len(captions))
            poller = _ProgressPoller(limiter, total, cfg)
            poller.start()
            # A read task returns a few large blocks, and an actor works through a block's batches one
            # after the other; blocks of one batch each let every actor hold batches_in_flight_per_actor
            # batches at once, so the rows that wait for a retry never leave the owners without work.
            ds = ds.repartition(target_num_rows_per_block=cfg.batch_size)
            ds = ds.map_batches(
                _Relay,
                fn_constructor_kwargs={"cfg": cfg.model_dump(mode="json"), "owners": owners, "limiter": limiter,
                                       "captions_ref": [ray.put(captions)]},
                compute=ray.data.ActorPoolStrategy(
                    size=cfg.actors, max_concurrent_calls_per_actor=cfg.batches_in_flight_per_actor,
                    max_tasks_in_flight_per_actor=cfg.batches_in_flight_per_actor * 2),
                batch_size=cfg.batch_size,
                batch_format="pyarrow",
                num_cpus=0.25,  # I/O bound: the work happens on the endpoint
            )
        else:
            ds = ds.map_batches(_template_table, fn_kwargs={"provider": provider, "tasks": tasks},
                                batch_format="pyarrow")
        with warnings.catch_warnings():
            # Ray's note that a small input gives the actor pool fewer blocks than actors: nothing to act on.
            warnings.filterwarnings("ignore", message="The minimum number of concurrent actors")
            write_split_records(ds, out_dir)
        if llm:
            ray.get([o.finish.remote() for o in owners])
            stats = ray.get(limiter.stats.remote())
            poller.finish(stats)
            c = stats["counts"]
            for name in ("requests", "cache_hits", "deduped", "prompt_tokens", "completion_tokens"):
                counts[name] = int(c.get(name, 0))
            counts["failures"] = stats["failures"]
            elapsed = max(time.monotonic() - started, 1e-9)
            counts["requests_per_min"] = round(counts["requests"] / elapsed * 60, 1)
            if stats.get("spent_usd") is not None:
                counts["spent_usd"] = stats["spent_usd"]
            if cfg.budget_tokens is not None:
                counts["budget_tokens"] = cfg.budget_tokens
            if cfg.budget_usd is not None:
                counts["budget_usd"] = cfg.budget_usd
    finally:
        data_ctx.enable_progress_bars = bars
        data_ctx.execution_options.preserve_order = ordered
        if poller is not None and poller.is_alive():
            poller.stop_event.set()
            poller.join(timeout=10)
        for actor in (owners or []) + ([limiter] if limiter is not None else []):
            ray.kill(actor)
    for split in SPLITS:
        _count(out_dir, split, set(tasks), counts)
    counts["by_status"] = dict(sorted(counts["by_status"].items()))
    return counts
