"""Rephrasing at scale: acceptance rules, the shared limiter, retries, the cache, the budget, context, secrets."""

import json
import logging
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ying.config import RephraseConfig
from ying.data.rephrase import RephraseItem, build_prompt, check_rephrasing, rephrase_records
from ying.data.rephrase.cache import CacheWriter, load_cache
from ying.data.rephrase.limiter import RateBudget
from ying.data.rephrase.providers import LLMClient, LocalLimiter, Recorder
from ying.data.schema import RECORD_SCHEMA

sys.path.insert(0, str(Path(__file__).parent))
from openai_stub_server import OpenAIStubServer  # noqa: E402

SECRET = "sk-test-secret-never-stored-9876543210"
KEY_ENV = "YING_TEST_REPHRASE_SCALE_KEY"


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


# -- acceptance rules --------------------------------------------------------------------------


@pytest.mark.parametrize("text,answer,verdict", [
    ("Yes, the man is wearing a hat.", "yes", None),
    ("The man is wearing a hat.", "yes", None),  # affirms without the word
    ("The man isn't wearing a hat.", "yes", "disagrees"),
    ("No, there is no dog here.", "no", None),
    ("The man is not wearing a hat.", "no", None),
    ("The man is wearing a hat.", "no", "disagrees"),
    ("There are two cats on the sofa.", "2", None),
    ("There are 2 cats on the sofa.", "two", None),
    ("There are three cats on the sofa.", "2", "disagrees"),
    ("There are no people in the photo.", "0", None),
    ("The bus is red and white.", "red", None),
    ("Sorry, I can't help with that: red.", "red", "refusal"),
    ("The question is not answerable from this picture: red.", "red", "refusal"),
    ("Based on the image description, the car is red.", "red", "refusal"),
    ("I cannot determine the colour, maybe red.", "red", "refusal"),
])
def test_acceptance_rules(text, answer, verdict):
    assert check_rephrasing(text, answer) == verdict


# -- the limiter -------------------------------------------------------------------------------


def test_rate_budget_paces_requests_tokens_pauses_and_budget():
    clock = FakeClock()
    b = RateBudget(rpm=60, tpm=None, burst_s=0.0, clock=clock)  # one request per second
    waits = [b.reserve(10) for _ in range(4)]
    assert waits == [0.0, 1.0, 2.0, 3.0]  # booked slots, one per second, all callers in one queue
    clock.t += 10
    assert b.reserve(10) == 0.0
    b.pause(5.0)  # Retry-After: nobody sends for 5 s
    assert b.reserve(10) == 5.0

    clock = FakeClock()
    t = RateBudget(rpm=None, tpm=600, burst_s=0.0, clock=clock)  # 10 tokens per second
    assert t.reserve(100) == 0.0
    assert t.reserve(100) == pytest.approx(10.0)  # the first booking's 100 tokens take 10 s
    t.settle(100, 50)  # it used only 50: the schedule moves 5 s earlier
    assert t.reserve(10) == pytest.approx(15.0)

    budget = RateBudget(rpm=None, budget_tokens=100, clock=FakeClock())
    assert budget.reserve(60) == 0.0
    assert budget.reserve(60) is None  # 60 in flight + 60 > 100
    budget.settle(60, 30)
    assert budget.reserve(60) == 0.0  # 30 spent + 60 <= 100
    with pytest.raises(ValueError, match="rephrase.rpm"):
        RateBudget(rpm=0)


# -- the client: retries, Retry-After, malformed -------------------------------------------------


@pytest.mark.parametrize("fault", ["429", "500", "timeout", "malformed"])
def test_client_retries_each_fault_kind_then_gives_up_with_its_kind(fault):
    import asyncio

    cfg = RephraseConfig(provider="openai", base_url="x", model="m", max_retries=2, backoff_s=0.01,
                         timeout_s=0.5, api_key_env=KEY_ENV)
    with OpenAIStubServer(faults={fault: 1.0}, fault_retry_after_s=0.2, timeout_sleep_s=1.0) as stub:
        cfg = cfg.model_copy(update={"base_url": stub.base_url})
        budget = RateBudget(rpm=None)
        recorder = Recorder()

        async def go():
            client = LLMClient(cfg, LocalLimiter(budget), recorder)
            try:
                return await client.complete(build_prompt(RephraseItem("q?", "red")), "vqa-v2")
            finally:
                await client.aclose()

        outcome = asyncio.run(go())
        assert len(stub.requests) == 3  # one try + two retries
    kind = {"429": "http_429", "500": "http_500", "timeout": "timeout", "malformed": "malformed"}[fault]
    assert outcome.error == kind and outcome.text is None
    assert recorder.failures == {kind: 3} and recorder.counts["requests"] == 3
    if fault == "429":
        assert budget.paused_until > 0  # the Retry-After paused the shared limiter


# -- the cache -----------------------------------------------------------------------------------


def test_cache_latest_entry_wins_and_a_torn_line_is_skipped(tmp_path, caplog):
    w = CacheWriter(str(tmp_path / "cache"))
    w.add("m|v1|a", "m", "v1", "a", None, "timeout", 0, 0)
    w.add("m|v1|a", "m", "v1", "a", "Fine.", None, 5, 2)
    w.add("other|v1|b", "other", "v1", "b", "Other model.", None, 5, 2)
    w.close()
    with open(tmp_path / "cache" / "torn.jsonl", "w") as f:
        f.write('{"key": "m|v1|c", "te')  # a crash mid-line
    with caplog.at_level(logging.WARNING):
        cache = load_cache(str(tmp_path / "cache"), "m", "v1")
    assert cache == {"m|v1|a": {"text": "Fine.", "error": None, "prompt_tokens": 5, "completion_tokens": 2}}
    assert "torn.jsonl line 1" in caplog.text


# -- the stage -----------------------------------------------------------------------------------


def _row(i, task, answer, inputs, meta, split="train"):
    return {"id": f"{task}-{split}-{i}", "task": task, "category": "vqa", "lang": "en", "split": split,
            "images": [b"img"], "instruction": "Answer.", "inputs": inputs, "outputs": answer,
            "meta": json.dumps(meta)}


def _write(root: Path, rows: list[dict]) -> None:
    d = root / "records" / "train"
    d.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA), d / "part-0.parquet")


def _statuses(out: Path) -> dict[str, str]:
    rows = pq.read_table(out / "records" / "train").to_pylist()
    return {r["id"]: json.loads(r["meta"]).get("rephrase", {}).get("status") for r in rows}


def _cfg(base_url, **kw):
    return RephraseConfig(provider="openai", base_url=base_url, model="stub-model", api_key_env=KEY_ENV,
                          max_retries=0, timeout_s=10.0, actors=1, progress_interval_s=0.5, **kw)


def test_stage_context_cache_retry_failed_budget_and_no_secret(ray_cluster, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(KEY_ENV, SECRET)
    rows = [
        _row(0, "coco", "A red bus on a street.", "", {"cocoid": 7}),
        _row(1, "coco", "A bus parked by the road.", "", {"cocoid": 7}),
        _row(2, "vqa-v2", "red", "What color is the bus?", {"image_id": 7}),
        _row(3, "a-okvqa", "umbrella", "What keeps the rain off?", {"rationales": ["It is raining.", "She holds it."]}),
        _row(4, "text-vqa", "stop", "What does the sign say?", {"ocr_tokens": ["STOP", "AHEAD"]}),
        _row(5, "vqa-v2", "unknowable", "Who made it?", {"image_id": 8}),
    ] + [_row(10 + i, "vqa-v2", f"blue {i}", f"Question {i}?", {"image_id": 9}) for i in range(6)]
    _write(tmp_path / "in", rows)
    tasks = ["vqa-v2", "a-okvqa", "text-vqa"]
    n = 10  # rows of those tasks
    out = tmp_path / "out"

    with OpenAIStubServer(refuse_answers={"unknowable"}) as stub, caplog.at_level(logging.INFO):
        # 1. A budget that covers only some requests: the rest fall back with reason "budget".
        first = rephrase_records(_cfg(stub.base_url, tasks=tasks, budget_tokens=500, max_tokens=64, max_concurrency=1),
                                 str(tmp_path / "in"), str(out))
        sent_first = len(stub.requests)
        st = _statuses(out)
        assert 0 < sent_first < n
        assert sum(s == "fallback:budget" for s in st.values()) == n - sent_first
        assert first["requests"] == sent_first and first["prompt_tokens"] + first["completion_tokens"] <= 500
        assert first["budget_tokens"] == 500

        # 2. Re-run without the budget: only the rows that were never sent are sent now.
        second = rephrase_records(_cfg(stub.base_url, tasks=tasks), str(tmp_path / "in"), str(out))
        assert len(stub.requests) == n
        assert second["cache_hits"] == sent_first and second["requests"] == n - sent_first
        prompts = [r["prompt"] for r in stub.requests]
        assert len(set(prompts)) == n  # no prompt was ever paid for twice
        st = _statuses(out)
        assert st["vqa-v2-train-5"] == "fallback:refusal"
        assert sum(s == "rephrased" for s in st.values()) == n - 1
        assert st["coco-train-0"] is None  # other tasks pass through

        # 3. A plain re-run sends nothing; --retry-failed sends only the one fallback.
        third = rephrase_records(_cfg(stub.base_url, tasks=tasks), str(tmp_path / "in"), str(out))
        assert len(stub.requests) == n and third["cache_hits"] == n and third["requests"] == 0
        rephrase_records(_cfg(stub.base_url, tasks=tasks, retry_failed=True), str(tmp_path / "in"), str(out))
        assert len(stub.requests) == n + 1
        assert "Answer: unknowable" in stub.requests[-1]["prompt"]

    # Context: COCO captions by image id (from the run's coco records), rationales, OCR tokens.
    by_answer = {r["body"]["messages"][0]["content"].rsplit("Answer: ", 1)[1].split("\n")[0]: r["prompt"]
                 for r in stub.requests}
    assert "Caption: A red bus on a street. A bus parked by the road.\nQuestion: What color is the bus?" in by_answer["red"]
    assert "Rationale: It is raining. She holds it.\nQuestion: What keeps the rain off?" in by_answer["umbrella"]
    assert "OCR tokens: STOP, AHEAD\nQuestion: What does the sign say?" in by_answer["stop"]
    assert all(r["body"]["model"] == "stub-model" for r in stub.requests)

    # The key travelled only in the Authorization header: not in rows, cache, logs.
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in caplog.text
    assert list((out / "cache").glob("*.jsonl"))


def test_cache_on_s3_shards_per_flush(s3_endpoint):
    """On an object store the cache is written as whole shard objects (no appends), and read back."""
    import fsspec

    s3_endpoint("ying-rephrase")
    w = CacheWriter("s3://ying-rephrase/run/rephrase/cache", flush_every=2)
    for i in range(5):
        w.add(f"m|v1|{i}", "m", "v1", str(i), f"text {i}", None, 1, 1)
    w.close()
    names = sorted(p.rsplit("/", 1)[1] for p in fsspec.filesystem("s3").find("ying-rephrase/run/rephrase/cache"))
    assert len(names) == 3 and names[0].endswith("-000000.jsonl")  # 2 + 2 + 1 entries
    cache = load_cache("s3://ying-rephrase/run/rephrase/cache", "m", "v1")
    assert {k: v["text"] for k, v in cache.items()} == {f"m|v1|{i}": f"text {i}" for i in range(5)}

