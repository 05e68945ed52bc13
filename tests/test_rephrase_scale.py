"""Rephrasing at scale: acceptance rules, the shared limiter, pauses, retries, the cache, budgets, secrets."""

import asyncio
import json
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ying.config import RephraseConfig
from ying.data.rephrase import RephraseItem, build_prompt, check_rephrasing, rephrase_records
from ying.data.rephrase.cache import CacheWriter, cache_key, cache_settings, load_cache, owner_of
from ying.data.rephrase.limiter import RateBudget
from ying.data.rephrase.providers import LLMClient, LocalLimiter, Recorder, retry_after_s
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


def test_refusal_words_quoted_from_the_question_or_the_ocr_text_are_not_refusals():
    sign = "What does the sign say?\nOCR tokens: SORRY, WE'RE, CLOSED"
    assert check_rephrasing("The sign says \u201cSorry, we\u2019re closed\u201d.", "sorry we're closed", sign) is None
    parking = "What does the notice on the gate say?\nOCR tokens: UNABLE, TO, PARK"
    assert check_rephrasing("The notice says you are unable to park here.", "unable to park", parking) is None
    # The same words where the sources do not hold them are still a refusal.
    assert check_rephrasing("I am unable to read the sign; it might say stop.", "stop",
                            "What does the sign say?\nOCR tokens: STOP") == "refusal"
    assert check_rephrasing("Sorry, the sign is unreadable, but it might be closed.", "closed",
                            "Is the shop open?") == "refusal"


# -- the limiter -------------------------------------------------------------------------------


def test_rate_budget_paces_requests_and_tokens():
    clock = FakeClock()
    b = RateBudget(rpm=60, tpm=None, burst_s=0.0, clock=clock)  # one request per second
    assert [b.reserve(10).wait for _ in range(4)] == [0.0, 1.0, 2.0, 3.0]  # booked slots, one queue
    clock.t += 10
    assert b.reserve(10).wait == 0.0

    clock = FakeClock()
    t = RateBudget(rpm=None, tpm=600, burst_s=0.0, clock=clock)  # 10 tokens per second
    assert t.reserve(100).wait == 0.0
    assert t.reserve(100).wait == pytest.approx(10.0)  # the first booking's 100 tokens take 10 s
    t.settle(100, 0, 50, 0)  # it used only 50: the schedule moves 5 s earlier
    assert t.reserve(10).wait == pytest.approx(15.0)
    with pytest.raises(ValueError, match="rephrase.rpm"):
        RateBudget(rpm=0)


def test_a_pause_reaches_requests_booked_before_it():
    clock = FakeClock()
    b = RateBudget(rpm=60, burst_s=0.0, clock=clock)
    first, second, _ = b.reserve(10), b.reserve(10), b.reserve(10)  # slots at 0, 1 and 2 s
    assert b.pause_left_since(second.epoch) == 0.0
    b.pause(5.0)  # the first request got a 429: Retry-After 5 s
    clock.t += 1.0  # `second` wakes up for its slot, inside the pause
    assert b.pause_left_since(second.epoch) == pytest.approx(4.0)  # so it must not fire ...
    again = b.rebook(10)  # ... and books a slot after the pause instead (no budget spent)
    assert again.wait >= 4.0 and again.epoch == second.epoch + 1
    assert b.pause_left_since(again.epoch) == 0.0
    assert b.reserve(10).wait == pytest.approx(again.wait + 1.0)  # after the pause, paced, not piled up
    clock.t += 10
    assert b.pause_left_since(first.epoch) == 0.0  # the pause is over


def test_budgets_in_tokens_and_in_money():
    tokens = RateBudget(rpm=None, budget_tokens=100, clock=FakeClock())
    assert tokens.reserve(60) is not None
    assert tokens.reserve(60) is None  # 60 in flight + 60 > 100
    tokens.settle(60, 0, 30, 0)
    assert tokens.reserve(60) is not None  # 30 spent + 60 <= 100

    # $2 / 1M prompt tokens, $6 / 1M completion tokens; a booking of 1000 + 500 estimates $0.005.
    money = RateBudget(rpm=None, budget_usd=0.01, usd_per_1m=(2.0, 6.0), clock=FakeClock())
    assert money.reserve(1000, 500) is not None and money.reserve(1000, 500) is not None
    assert money.reserve(1000, 500) is None  # $0.010 in flight: nothing more fits
    money.settle(1000, 500, 500, 100)
    money.settle(1000, 500, 500, 100)  # each used $0.001 + $0.0006
    assert money.spent_usd == pytest.approx(0.0032) and money.spent_tokens == 1200
    assert money.reserve(1000, 500) is not None  # $0.0032 + $0.005 <= $0.01
    assert money.reserve(1000, 500) is None
    with pytest.raises(ValueError, match="rephrase.prices"):
        RephraseConfig(budget_usd=5.0, model="a-model-without-a-price")
    assert RephraseConfig(budget_usd=5.0).price().prompt_per_1m == 2.0  # the paper's model has a price


def test_retry_after_as_seconds_milliseconds_or_an_http_date():
    now = datetime(2024, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert retry_after_s({"retry-after": "7"}) == 7.0
    assert retry_after_s({"retry-after-ms": "250", "retry-after": "1"}) == 0.25
    assert retry_after_s({"retry-after": "Mon, 01 Jan 2024 12:00:30 GMT"}, now=now) == 30.0
    assert retry_after_s({"retry-after": "Mon, 01 Jan 2024 11:59:00 GMT"}, now=now) == 0.0  # already past
    assert retry_after_s({"retry-after": "soon"}) is None
    assert retry_after_s({}) is None


# -- the client: retries, Retry-After, malformed, pauses ---------------------------------------------


def _client_cfg(base_url, **kw):
    return RephraseConfig(provider="openai", base_url=base_url, model="m", api_key_env=KEY_ENV, **kw)


@pytest.mark.parametrize("fault", ["429", "500", "timeout", "malformed"])
def test_client_retries_each_fault_kind_then_gives_up_with_its_kind(fault):
    with OpenAIStubServer(faults={fault: 1.0}, fault_retry_after_s=0.2, timeout_sleep_s=1.0) as stub:
        cfg = _client_cfg(stub.base_url, max_retries=2, backoff_s=0.01, timeout_s=0.5)
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
        assert budget.epoch == 2  # each Retry-After paused the shared limiter


def _complete_all(cfg, budget, items):
    async def go():
        client = LLMClient(cfg, LocalLimiter(budget))
        try:
            return await asyncio.gather(*(client.complete(build_prompt(it)) for it in items))
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_a_retry_after_date_pauses_everyone():
    with OpenAIStubServer(first_429s=1, retry_after_date=True, fault_retry_after_s=2.0) as stub:
        budget = RateBudget(rpm=None)
        outcomes = _complete_all(_client_cfg(stub.base_url, max_retries=1, backoff_s=0.01), budget,
                                 [RephraseItem("q?", "red")])
        first, second = stub.requests
    assert "retry-after-ms" not in str(first)  # the stub really sent only the date
    assert outcomes[0].text and budget.epoch == 1
    assert second["t"] - first["t"] >= 1.0  # the date (>= 2 s ahead, in whole seconds) was obeyed


def test_requests_booked_before_a_429_wait_out_its_pause():
    """Five requests booked one second apart; the first gets a 429 saying "come back in 3 s". The ones
    booked for second 1 and 2 must not fire into the pause: they book again after it."""
    with OpenAIStubServer(first_429s=1, fault_retry_after_s=3.0) as stub:
        budget = RateBudget(rpm=60, burst_s=0.0)
        items = [RephraseItem(f"Question {i}?", f"answer {i}") for i in range(5)]
        outcomes = _complete_all(_client_cfg(stub.base_url, max_retries=1, backoff_s=0.01), budget, items)
        times = [r["t"] for r in stub.requests]
    assert all(o.text for o in outcomes) and len(times) == 6  # one 429 + five answers
    assert min(times[1:]) - times[0] >= 2.9  # nothing reached the server during the pause


# -- the cache -----------------------------------------------------------------------------------


def test_the_cache_key_covers_every_setting_that_changes_an_answer():
    base = {"model": "m", "prompt_version": "v1", "temperature": 0.0, "max_tokens": 256, "base_url": "http://a/v1"}
    key = cache_key(cache_settings(**base), "the prompt")
    for change in ({"model": "m2"}, {"prompt_version": "v2"}, {"temperature": 0.7}, {"max_tokens": 64},
                   {"base_url": "http://b/v1"}):
        assert cache_key(cache_settings(**{**base, **change}), "the prompt") != key, change
    assert cache_key(cache_settings(**base), "another prompt") != key
    assert cache_key(cache_settings(**{**base, "base_url": "http://a/v1/"}), "the prompt") == key  # same endpoint
    assert cache_settings("m", "v1", 0, 256, None)["endpoint"] == "https://api.openai.com/v1"


def test_cache_loads_by_settings_and_owner_latest_wins_and_a_torn_line_is_skipped(tmp_path, caplog):
    settings = cache_settings("m", "v1", 0.0, 256, "http://a/v1")
    hotter = cache_settings("m", "v1", 0.9, 256, "http://a/v1")
    keys = [cache_key(settings, f"prompt {i}") for i in range(30)]
    w = CacheWriter(str(tmp_path / "cache"), settings)
    w.add(keys[0], "sha", None, "timeout", 0, 0)
    for k in keys:
        w.add(k, "sha", f"text {k[:6]}", None, 5, 2)
    w.close()
    other = CacheWriter(str(tmp_path / "cache"), hotter)
    other.add(cache_key(hotter, "prompt 0"), "sha", "a hotter answer", None, 5, 2)
    other.close()
    with open(tmp_path / "cache" / "torn.jsonl", "w") as f:
        f.write('{"key": "abc", "te')  # a crash mid-line
    with caplog.at_level(logging.WARNING):
        cache = load_cache(str(tmp_path / "cache"), settings)
    assert set(cache) == set(keys)  # nothing of the other temperature
    assert cache[keys[0]] == {"text": f"text {keys[0][:6]}", "error": None, "prompt_tokens": 5, "completion_tokens": 2}
    assert "torn.jsonl line 1" in caplog.text
    shares = [load_cache(str(tmp_path / "cache"), settings, owner=(i, 3)) for i in range(3)]
    assert sum(len(s) for s in shares) == len(keys) and all(shares)
    assert all(k in shares[owner_of(k, 3)] for k in keys)


def test_cache_on_s3_shards_per_flush(s3_endpoint):
    """On an object store the cache is written as whole shard objects (no appends), and read back."""
    import fsspec

    s3_endpoint("ying-rephrase")
    settings = cache_settings("m", "v1", 0.0, 256, None)
    w = CacheWriter("s3://ying-rephrase/run/rephrase/cache", settings, flush_every=2)
    keys = [cache_key(settings, str(i)) for i in range(5)]
    for i, k in enumerate(keys):
        w.add(k, str(i), f"text {i}", None, 1, 1)
    w.close()
    names = sorted(p.rsplit("/", 1)[1] for p in fsspec.filesystem("s3").find("ying-rephrase/run/rephrase/cache"))
    assert len(names) == 3 and names[0].endswith("-000000.jsonl")  # 2 + 2 + 1 entries
    cache = load_cache("s3://ying-rephrase/run/rephrase/cache", settings)
    assert {k: v["text"] for k, v in cache.items()} == {k: f"text {i}" for i, k in enumerate(keys)}


# -- the build keeps an adapter's original answer ------------------------------------------------------


def test_build_keeps_the_adapters_original_answer(tmp_path):
    import io

    from PIL import Image

    from ying.data.build import materialize_record

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 100, 150)).save(buf, format="JPEG")
    (tmp_path / "img.jpg").write_bytes(buf.getvalue())
    base = {"task": "science-qa", "split": "train", "source_id": "1", "source": "problems.json#1",
            "inputs": "Which color is the flower?\n(A) blue (B) pink", "outputs": "(B) pink",
            "image_paths": [str(tmp_path / "img.jpg")]}
    multiple_choice = materialize_record({**base, "meta": {"original_answer": "pink"}}, 0, 8, 10_000)
    assert json.loads(multiple_choice["meta"])["original_answer"] == "pink"
    plain = materialize_record({**base, "meta": {}}, 0, 8, 10_000)
    assert json.loads(plain["meta"])["original_answer"] == "(B) pink"  # none given: the output


# -- the stage -----------------------------------------------------------------------------------


def _row(i, task, answer, inputs, meta, split="train"):
    return {"id": f"{task}-{split}-{i}", "task": task, "category": "vqa", "lang": "en", "split": split,
            "images": [b"img"], "instruction": "Answer.", "inputs": inputs, "outputs": answer,
            "meta": json.dumps(meta)}


def _write(root: Path, rows: list[dict]) -> None:
    for split in {r["split"] for r in rows}:
        d = root / "records" / split
        d.mkdir(parents=True)
        part = [r for r in rows if r["split"] == split]
        for k in range(0, len(part), 5):  # several files, several blocks
            pq.write_table(pa.Table.from_pylist(part[k:k + 5], schema=RECORD_SCHEMA), d / f"part-{k}.parquet")


def _out_rows(out: Path) -> dict[str, dict]:
    rows = {}
    for d in (out / "records").iterdir():
        rows.update({r["id"]: r for r in pq.read_table(d, schema=RECORD_SCHEMA).to_pylist()})
    return rows


def _statuses(out: Path) -> dict[str, str]:
    return {i: json.loads(r["meta"]).get("rephrase", {}).get("status") for i, r in _out_rows(out).items()}


def _cfg(base_url, **kw):
    kw.setdefault("actors", 1)
    kw.setdefault("max_tokens", 64)
    return RephraseConfig(provider="openai", base_url=base_url, model="stub-model", api_key_env=KEY_ENV,
                          max_retries=0, timeout_s=10.0, progress_interval_s=0.5, **kw)


def test_stage_context_cache_retry_failed_money_budget_and_no_secret(ray_cluster, tmp_path, monkeypatch, caplog):
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
    # $1,000 per million tokens: a request books ~$0.24 (its prompt estimate + max_tokens) and costs ~$0.12.
    prices = {"stub-model": {"prompt_per_1m": 1000.0, "completion_per_1m": 1000.0}}

    with OpenAIStubServer(refuse_answers={"unknowable"}) as stub, caplog.at_level(logging.INFO):
        # 1. A money budget that covers only some requests: the rest fall back with reason "budget".
        first = rephrase_records(_cfg(stub.base_url, tasks=tasks, budget_usd=1.0, prices=prices, max_concurrency=1), str(tmp_path / "in"), str(out))
        sent_first = len(stub.requests)
        st = _statuses(out)
        assert 0 < sent_first < n
        assert sum(s == "fallback:budget" for s in st.values()) == n - sent_first
        assert first["requests"] == sent_first and first["budget_usd"] == 1.0
        spent = (first["prompt_tokens"] + first["completion_tokens"]) * 1000 / 1e6
        assert first["spent_usd"] == pytest.approx(spent) and spent <= 1.0

        # 2. Re-run without the budget: only the rows that were never sent are sent now.
        second = rephrase_records(_cfg(stub.base_url, tasks=tasks), str(tmp_path / "in"), str(out))
        assert len(stub.requests) == n
        assert second["cache_hits"] == sent_first and second["requests"] == n - sent_first
        assert set(stub.sent_prompts().values()) == {1}  # no prompt was ever paid for twice
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


def _reply(answer: str, prompt: str) -> str:
    if answer == "(B) pink":
        return "The flower in the picture is pink, so the answer is option B."
    if answer == "sorry we're closed":
        return "The sign on the door says \u201cSorry, we\u2019re closed\u201d."
    return f"Looking at the image, the answer is {answer}."


def _actors_created(class_fragment: str) -> int:
    import ray
    from ray.util.state import list_actors

    actors = list_actors(address=ray.get_runtime_context().gcs_address, limit=10_000, raise_on_missing_output=False)
    return sum(class_fragment in (a.class_name or "") for a in actors)


def test_stage_one_pipeline_for_all_splits_and_no_prompt_paid_twice(ray_cluster, tmp_path, capsys):
    """Three splits, two prompt owners, two Ray Data actors, the same prompt in 9 rows across splits:
    each prompt reaches the server once; the actors start once for all splits."""
    same = ("What color is the bus?", "red")
    rows = ([_row(i, "vqa-v2", same[1], same[0], {}) for i in range(6)]
            + [_row(10 + i, "vqa-v2", f"blue {i}", f"Question {i}?", {}) for i in range(2)]
            + [_row(20 + i, "vqa-v2", same[1], same[0], {}, split="test") for i in range(3)]
            + [_row(30, "vqa-v2", "green", "And the car?", {}, split="test")]
            + [_row(40, "science-qa", "(B) pink", "Which color is the flower?\n(A) blue (B) pink",
                    {"original_answer": "pink"}, split="validation"),
               _row(41, "text-vqa", "sorry we're closed", "What does the sign say?",
                    {"ocr_tokens": ["SORRY", "WE'RE", "CLOSED"]}, split="validation"),
               _row(42, "coco", "A cat on a mat.", "", {}, split="validation")])
    _write(tmp_path / "in", rows)
    cfg = _cfg(None, tasks=["vqa-v2", "science-qa", "text-vqa"], actors=2, batch_size=4, max_concurrency=4,
               rpm=6000)
    owners_before, relays_before = _actors_created("_PromptOwner"), _actors_created("_Relay")
    with OpenAIStubServer(reply=_reply) as stub:
        counts = rephrase_records(cfg.model_copy(update={"base_url": stub.base_url}), str(tmp_path / "in"),
                                  str(tmp_path / "out"))
        sent = stub.sent_prompts()
        assert len(sent) == 6 and set(sent.values()) == {1}  # 6 distinct prompts, each paid once
        assert counts["requests"] == 6 and counts["deduped"] + counts["cache_hits"] == 8  # 9 "red" rows, 1 sent
        # The temperature is part of the cache key: the same prompts at another temperature are new requests.
        hotter = rephrase_records(cfg.model_copy(update={"base_url": stub.base_url, "temperature": 0.5}),
                                  str(tmp_path / "in"), str(tmp_path / "out"))
        assert hotter["requests"] == 6 and hotter["cache_hits"] + hotter["deduped"] == 8
        assert sorted(r["body"]["temperature"] for r in stub.requests) == [0.0] * 6 + [0.5] * 6
    assert _actors_created("_PromptOwner") - owners_before == 4  # 2 per run, not 2 per split
    assert _actors_created("_Relay") - relays_before == 4

    out = _out_rows(tmp_path / "out")
    assert set(out) == {r["id"] for r in rows}  # every row of every split, in its split's folder
    assert all(r["split"] in str(p) for p in (tmp_path / "out" / "records").iterdir()
               for r in pq.read_table(p, schema=RECORD_SCHEMA).to_pylist())
    assert counts["by_status"] == {"rephrased": 14} and counts["untouched"] == 1
    mc = out["science-qa-validation-40"]
    assert mc["outputs"] == "The flower in the picture is pink, so the answer is option B."
    assert json.loads(mc["meta"])["original_answer"] == "pink"  # checked against the option's text
    assert out["text-vqa-validation-41"]["outputs"].startswith("The sign on the door says")  # quoting is no refusal
    assert "Answer: (B) pink\n" in next(p for p in sent if "flower" in p)  # the prompt rewrites the target
    printed = capsys.readouterr().out
    assert "[ying] rephrase: 14/14 answers (100.0%)" in printed and "requests/min (cap 6,000)" in printed


def test_a_slow_row_never_holds_up_its_batch_mates(ray_cluster, tmp_path):
    """A batch of six: the server holds one answer back; the five others come out of the batch before it."""
    import ray

    from ying.data.rephrase import stage

    with OpenAIStubServer(hold_answers={"slow"}) as stub:
        cfg = _cfg(stub.base_url, tasks=["vqa-v2"], actors=2, max_concurrency=8)
        limiter, owners = stage._start_actors(cfg, str(tmp_path / "cache"))
        try:
            relay = stage._Relay(cfg.model_dump(mode="json"), owners, limiter, [ray.put({})])
            rows = [_row(i, "vqa-v2", "slow" if i == 0 else f"fast {i}", f"Question {i}?", {}) for i in range(6)]
            batch = relay(pa.Table.from_pylist(rows + [_row(9, "coco", "A bus.", "", {})], schema=RECORD_SCHEMA))
            assert next(batch).column("task").to_pylist() == ["coco"]  # untouched rows leave at once
            done = []
            while len(done) < 5:
                done += next(batch).to_pylist()  # the fast rows, while "slow" is still held at the server
            assert sorted(r["id"] for r in done) == [f"vqa-v2-train-{i}" for i in range(1, 6)]
            assert any("Answer: slow" in p for p in stub.sent_prompts())  # it is in flight, not queued
            stub.release_held()
            last = next(batch).to_pylist()
            assert [r["id"] for r in last] == ["vqa-v2-train-0"]
            assert json.loads(last[0]["meta"])["rephrase"]["status"] == "rephrased"
            with pytest.raises(StopIteration):
                next(batch)
        finally:
            for actor in owners + [limiter]:
                ray.kill(actor)
