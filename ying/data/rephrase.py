"""Short answer rephrasing (paper §2.2 (2), Appendix C Table 10).

Terse dataset answers ("Magellan") are rewritten into full responses by an LLM given the question,
the answer and optional context (a caption, a rationale, OCR tokens). A rewrite is kept only when it
still contains the original answer and is not a refusal; otherwise the record falls back to the
paper's "basic template to convert the original answer into a sentence". The original short answer
always stays in ``meta.original_answer``, and ``meta.rephrase`` says how ``outputs`` was made.

Two providers share one ``RephraseProvider`` protocol: ``TemplateProvider`` (offline) and
``OpenAIProvider`` (any OpenAI-compatible endpoint). ``rephrase_records`` is the Ray Data stage.

The API key is read from the environment variable named by ``RephraseConfig.api_key_env``, in the
process that sends the requests (on a cluster: set it in the workers' environment). It is never
logged, stored in a row, or put in meta.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import pyarrow as pa

from ying import storage
from ying.config import RephraseConfig
from ying.data.schema import RECORD_SCHEMA, SPLITS
from ying.eval.metrics import normalize_answer

__all__ = [
    "TABLE10_PROMPT",
    "TEMPLATE_PROMPT_VERSION",
    "RephraseItem",
    "RephraseResult",
    "RephraseProvider",
    "TemplateProvider",
    "OpenAIProvider",
    "make_provider",
    "build_prompt",
    "template_sentence",
    "check_rephrasing",
    "context_from_meta",
    "rephrase_rows",
    "rephrase_records",
]

log = logging.getLogger(__name__)

# Table 10, verbatim; the paper's PDF extraction lost the line breaks, restored here.
TABLE10_PROMPT = (
    "You are an AI visual assistant. Now you are given a question related to an image and a short "
    "ground-truth answer. Your task is to transform the ground-truth answer into a natural and "
    "convincing response. Make sure the response is accurate, highly relevant to the question, and "
    "consistent with the original answer.\n"
    "\n"
    "Question: Which NASA space probe was launched to this planet in 1989?\n"
    "Answer: Magellan\n"
    "Transformed Answer: NASA sent the Magellan spacecraft to Venus in 1989, which was the first "
    "planetary spacecraft launched from a space shuttle.\n"
    "\n"
    "{context}"
    "Question: {Q}\n"
    "Answer: {A}\n"
    "Transformed Answer:"
)
TEMPLATE_PROMPT_VERSION = "basic-template-v1"

_REFUSAL_MARKERS = (
    "sorry",
    "cannot",
    "can't",
    "can not",
    "unable to",
    "not answerable",
    "not possible to",
    "as an ai",
    "i don't know",
    "i do not know",
    "无法",
    "抱歉",
    "对不起",
)


@dataclass(frozen=True)
class RephraseItem:
    question: str
    answer: str
    lang: str = "en"
    context: str | None = None  # extra prompt line(s), already labelled, e.g. "Caption: a cat on a mat"


@dataclass(frozen=True)
class RephraseResult:
    text: str
    status: str  # "rephrased" | "template" | "fallback:<reason>"


@runtime_checkable
class RephraseProvider(Protocol):
    name: str
    model: str
    prompt_version: str

    def rephrase(self, items: list[RephraseItem]) -> list[RephraseResult]: ...


def template_sentence(answer: str, lang: str) -> str:
    """The paper's basic template: "The answer is {A}." / "答案是{A}。"."""
    a = answer.strip()
    if lang == "zh":
        return f"答案是{a.rstrip('。.')}。"
    return f"The answer is {a.rstrip('.')}."


def build_prompt(item: RephraseItem) -> str:
    context = f"{item.context.strip()}\n" if item.context and item.context.strip() else ""
    return TABLE10_PROMPT.format(context=context, Q=item.question.strip(), A=item.answer.strip())


def _contains_answer(text: str, answer: str) -> bool:
    norm_answer, norm_text = normalize_answer(answer), normalize_answer(text)
    if not norm_answer:
        return False
    if re.search(r"[\u3400-\u9fff]", norm_answer):
        return norm_answer.replace(" ", "") in norm_text.replace(" ", "")
    return f" {norm_answer} " in f" {norm_text} "


def _clean_response(text: str | None) -> str:
    text = (text or "").strip()
    if text.lower().startswith("transformed answer:"):
        text = text[len("transformed answer:"):].strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def check_rephrasing(text: str, answer: str) -> str | None:
    """Why a rewrite is rejected (``empty``, ``refusal``, ``disagrees``), or None when it is kept."""
    if not text.strip():
        return "empty"
    lowered = text.lower()
    if any(marker in lowered for marker in _REFUSAL_MARKERS):
        return "refusal"
    if not _contains_answer(text, answer):
        return "disagrees"
    return None


class TemplateProvider:
    """Offline: every answer becomes the basic template sentence."""

    name = "template"
    model = "template"
    prompt_version = TEMPLATE_PROMPT_VERSION

    def rephrase(self, items: list[RephraseItem]) -> list[RephraseResult]:
        return [RephraseResult(template_sentence(it.answer, it.lang), "template") for it in items]


def _error_kind(err: BaseException) -> str:
    import openai

    if isinstance(err, openai.APITimeoutError):
        return "timeout"
    if isinstance(err, openai.APIConnectionError):
        return "connection"
    if isinstance(err, openai.APIStatusError):
        return f"http_{err.status_code}"
    return type(err).__name__.lower()


def _run_coroutine(coro):
    """Run ``coro`` to completion from sync code, also when the caller already has a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


class OpenAIProvider:
    """Any OpenAI-compatible chat endpoint, at most ``cfg.max_concurrency`` requests in flight.

    Retries (with backoff, on connection errors, 408/409/429 and 5xx) are the ``openai`` client's own,
    ``cfg.max_retries`` of them; a request that still fails falls back to the template.
    """

    name = "openai"

    def __init__(self, cfg: RephraseConfig) -> None:
        try:
            import openai  # noqa: F401
        except ImportError as e:  # pragma: no cover - openai is a dependency
            raise ImportError("OpenAIProvider needs the openai package: pip install openai") from e
        if cfg.max_concurrency < 1:
            raise ValueError(f"rephrase.max_concurrency must be >= 1, got {cfg.max_concurrency}")
        self.cfg = cfg
        self.model = cfg.model
        self.prompt_version = cfg.prompt_version

    def _client(self):
        import openai

        # Local servers (vLLM, Ollama, a stub) accept any key; the real one only comes from the env.
        api_key = os.environ.get(self.cfg.api_key_env) or "EMPTY"
        return openai.AsyncOpenAI(
            base_url=self.cfg.base_url,
            api_key=api_key,
            timeout=self.cfg.timeout_s,
            max_retries=self.cfg.max_retries,
        )

    async def _one(self, client, sem: asyncio.Semaphore, item: RephraseItem) -> RephraseResult:
        async with sem:
            try:
                response = await client.chat.completions.create(
                    model=self.cfg.model,
                    temperature=self.cfg.temperature,
                    messages=[{"role": "user", "content": build_prompt(item)}],
                )
            except Exception as err:  # every failure becomes a labelled fallback, never a crash
                kind = _error_kind(err)
                log.warning("rephrase request failed after retries (%s); using the template", kind)
                return RephraseResult(template_sentence(item.answer, item.lang), f"fallback:error:{kind}")
        choices = response.choices or []
        text = _clean_response(choices[0].message.content if choices else "")
        reason = check_rephrasing(text, item.answer)
        if reason is not None:
            return RephraseResult(template_sentence(item.answer, item.lang), f"fallback:{reason}")
        return RephraseResult(text, "rephrased")

    async def arephrase(self, items: list[RephraseItem]) -> list[RephraseResult]:
        sem = asyncio.Semaphore(self.cfg.max_concurrency)
        async with self._client() as client:
            return list(await asyncio.gather(*(self._one(client, sem, it) for it in items)))

    def rephrase(self, items: list[RephraseItem]) -> list[RephraseResult]:
        if not items:
            return []
        return _run_coroutine(self.arephrase(items))


def make_provider(cfg: RephraseConfig) -> RephraseProvider:
    """``auto`` means openai when ``base_url`` is set, else the offline template."""
    kind = cfg.provider
    if kind == "auto":
        kind = "openai" if cfg.base_url else "template"
    if kind == "template":
        return TemplateProvider()
    if kind == "openai":
        if not cfg.base_url and cfg.provider == "openai" and not os.environ.get(cfg.api_key_env):
            raise ValueError(
                f"rephrase.provider=openai with no base_url talks to api.openai.com and needs the key in "
                f"${cfg.api_key_env}; set that variable, or set rephrase.base_url to a local server, "
                f"or use rephrase.provider=template"
            )
        return OpenAIProvider(cfg)
    raise ValueError(f"unknown rephrase.provider {cfg.provider!r}")


# ---------------------------------------------------------------------------------------------
# Records


def context_from_meta(meta: dict[str, Any]) -> str | None:
    """The extra prompt lines the paper adds: COCO captions (VQA v2), rationales (A-OKVQA), OCR tokens."""
    lines = []
    for key, label in (("caption", "Caption"), ("captions", "Caption"), ("rationale", "Rationale"),
                       ("rationales", "Rationale"), ("ocr_tokens", "OCR tokens")):
        value = meta.get(key)
        if not value:
            continue
        if isinstance(value, (list, tuple)):
            sep = ", " if key == "ocr_tokens" else " "
            value = sep.join(str(v) for v in value)
        lines.append(f"{label}: {value}")
    return "\n".join(lines) or None


def rephrase_rows(rows: list[dict[str, Any]], provider: RephraseProvider, tasks: set[str]) -> list[dict[str, Any]]:
    """Record dicts in, record dicts out; only rows whose task is in ``tasks`` are rewritten."""
    picked, items = [], []
    for i, row in enumerate(rows):
        if row["task"] not in tasks:
            continue
        meta = json.loads(row["meta"] or "{}")
        answer = meta.get("original_answer")
        if not isinstance(answer, str) or not answer.strip():
            answer = row["outputs"]
        picked.append((i, meta, answer))
        items.append(RephraseItem(question=row["inputs"] or "", answer=answer, lang=row["lang"],
                                  context=context_from_meta(meta)))
    results = provider.rephrase(items) if items else []
    out = list(rows)
    for (i, meta, answer), result in zip(picked, results):
        meta["original_answer"] = answer
        meta["rephrase"] = {
            "status": result.status,
            "provider": provider.name,
            "model": provider.model,
            "prompt_version": provider.prompt_version,
        }
        out[i] = {**rows[i], "outputs": result.text, "meta": json.dumps(meta, ensure_ascii=False)}
    return out


def _rephrase_table(table: pa.Table, provider: RephraseProvider, tasks: list[str]) -> pa.Table:
    rows = rephrase_rows(table.to_pylist(), provider, set(tasks))
    return pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)


class _RephraseActor:
    """One provider (one HTTP client config) per actor; batches fan out to concurrent requests."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = RephraseConfig.model_validate(cfg)
        self.provider = make_provider(self.cfg)

    def __call__(self, table: pa.Table) -> pa.Table:
        return _rephrase_table(table, self.provider, self.cfg.tasks)


def _arrow_fs(path: str):
    """(pyarrow filesystem, path) for a local path or fsspec URL."""
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


def _count(fs, files: list[str], tasks: set[str], counts: dict[str, Any]) -> None:
    import pyarrow.parquet as pq

    for f in files:
        with fs.open(f, "rb") as fh:
            table = pq.read_table(fh, columns=["task", "meta"])
        for task, meta in zip(table.column("task").to_pylist(), table.column("meta").to_pylist()):
            if task not in tasks:
                counts["untouched"] += 1
                continue
            status = json.loads(meta)["rephrase"]["status"]
            counts["by_status"][status] += 1
            if status.startswith("fallback:"):
                counts["fallback"] += 1
            else:
                counts["rephrased"] += 1


def rephrase_records(cfg: RephraseConfig, in_dir: str, out_dir: str) -> dict[str, Any]:
    """Ray Data stage: ``<in_dir>/records/<split>/*.parquet`` -> ``<out_dir>/records/<split>/``.

    Returns ``{rephrased, fallback, untouched, by_status}``; ``rephrased`` counts rows whose outputs
    the provider wrote (status ``rephrased`` or ``template``).
    """
    import ray
    import ray.data

    provider = make_provider(cfg)  # fail on a bad config before any data moves
    tasks = list(cfg.tasks)
    counts: dict[str, Any] = {"rephrased": 0, "fallback": 0, "untouched": 0, "by_status": Counter()}
    for split in SPLITS:
        src = storage.join(in_dir, "records", split)
        dst = storage.join(out_dir, "records", split)
        src_fs, src_path, src_fsspec = _arrow_fs(src)
        files = _parquet_files(src_fsspec, src_path)
        if not files:
            continue
        dst_fs, dst_path, dst_fsspec = _arrow_fs(dst)
        if dst_fsspec.exists(dst_path):  # a re-run replaces the split, never appends to it
            dst_fsspec.rm(dst_path, recursive=True)
        dst_fsspec.makedirs(dst_path, exist_ok=True)

        ds = ray.data.read_parquet(files, filesystem=src_fs, schema=RECORD_SCHEMA, partitioning=None)
        if isinstance(provider, OpenAIProvider):
            ds = ds.map_batches(
                _RephraseActor,
                fn_constructor_kwargs={"cfg": cfg.model_dump(mode="json")},
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=2),
                batch_size=max(cfg.max_concurrency * 4, 16),
                batch_format="pyarrow",
                num_cpus=0.5,  # I/O bound: the work happens on the endpoint
            )
        else:
            ds = ds.map_batches(
                _rephrase_table,
                fn_kwargs={"provider": provider, "tasks": tasks},
                batch_format="pyarrow",
            )
        ds.write_parquet(dst_path, filesystem=dst_fs)
        _count(dst_fsspec, _parquet_files(dst_fsspec, dst_path), set(tasks), counts)
        log.info("rephrased split %s of %s -> %s", split, src, dst)
    counts["by_status"] = dict(sorted(counts["by_status"].items()))
    return counts
