import json
import os
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ying.config import RephraseConfig
from ying.data.rephrase import (
    OpenAIProvider,
    RephraseItem,
    RephraseProvider,
    TemplateProvider,
    build_prompt,
    check_rephrasing,
    make_provider,
    rephrase_records,
    rephrase_rows,
)
from ying.data.schema import RECORD_SCHEMA

sys.path.insert(0, str(Path(__file__).parent))
from openai_stub_server import REFUSAL_TEXT, OpenAIStubServer  # noqa: E402

SECRET = "sk-test-secret-do-not-store-0123456789"
KEY_ENV = "YING_TEST_REPHRASE_KEY"
TABLE10_HEAD = "You are an AI visual assistant. Now you are given a question related to an image"


@pytest.fixture
def stub():
    with OpenAIStubServer(refuse_answers={"unknowable"}) as server:
        yield server


def _cfg(base_url, **kw):
    kw.setdefault("max_retries", 0)
    kw.setdefault("timeout_s", 10.0)
    return RephraseConfig(provider="openai", base_url=base_url, api_key_env=KEY_ENV, model="stub-model", **kw)


def test_template_provider_en_zh():
    p = TemplateProvider()
    assert isinstance(p, RephraseProvider)
    out = p.rephrase([RephraseItem("What color?", "blue", "en"), RephraseItem("这是什么？", "猫", "zh")])
    assert [r.text for r in out] == ["The answer is blue.", "答案是猫。"]
    assert {r.status for r in out} == {"template"}


def test_prompt_is_table10_with_context():
    prompt = build_prompt(RephraseItem("What is on the mat?", "cat", "en", "Caption: a cat on a mat"))
    assert prompt.startswith(TABLE10_HEAD)
    assert "Question: Which NASA space probe was launched to this planet in 1989?\nAnswer: Magellan\n" in prompt
    assert prompt.endswith("Caption: a cat on a mat\nQuestion: What is on the mat?\nAnswer: cat\nTransformed Answer:")
    assert "Caption" not in build_prompt(RephraseItem("q", "a"))


def test_check_rephrasing():
    assert check_rephrasing("The cat sits on the mat.", "cat") is None
    assert check_rephrasing("A dog sits on the mat.", "cat") == "disagrees"
    assert check_rephrasing("The category is pets.", "cat") == "disagrees"  # whole words only
    assert check_rephrasing(REFUSAL_TEXT, "cat") == "refusal"
    assert check_rephrasing("  ", "cat") == "empty"
    assert check_rephrasing("图片里是一只猫。", "猫") is None


def test_tasks_default_to_the_adapters_marked_for_rephrasing_and_the_presets_rely_on_it():
    from ying.config import load_config
    from ying.data.tasks import TASKS, rephrased_tasks

    marked = sorted(key for key, module in TASKS.items() if module.SPEC.rephrase)
    assert RephraseConfig().tasks is None and rephrased_tasks(None) == marked  # resolved from the adapters
    # Paper §2.2 / Appendix C: the short answers of the QA tasks, VQA v2 and A-OKVQA with their context.
    assert {"vqa-v2", "a-okvqa", "okvqa", "science-qa", "text-vqa", "msrvtt-qa"} <= set(marked)
    assert not {"coco", "coco-cn", "visual-dialog", "imagenet"} & set(marked)  # captions, dialogs, labels
    for preset in ("tiny", "paper"):
        assert rephrased_tasks(load_config(preset).rephrase.tasks) == marked


def test_make_provider_auto():
    assert make_provider(RephraseConfig()).name == "template"
    assert make_provider(RephraseConfig(base_url="http://127.0.0.1:1/v1")).name == "openai"
    assert make_provider(RephraseConfig(provider="template", base_url="http://x/v1")).name == "template"


def test_openai_provider_over_http(stub, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    provider = make_provider(_cfg(stub.base_url, max_concurrency=2))
    assert isinstance(provider, OpenAIProvider)
    items = [
        RephraseItem("What is on the mat?", "cat", "en", "Caption: a cat lying on a mat"),
        RephraseItem("Who painted this?", "unknowable", "en"),
        RephraseItem("这是什么动物？", "猫", "zh"),
    ]
    out = provider.rephrase(items)
    assert out[0].status == "rephrased" and out[0].text == "Looking at the image, the answer is cat."
    assert out[1].status == "fallback:refusal" and out[1].text == "The answer is unknowable."
    assert out[2].status == "rephrased" and out[2].text == "根据图片，答案是猫。"

    assert len(stub.requests) == 3
    prompts = {r["body"]["messages"][-1]["content"] for r in stub.requests}
    first = next(p for p in prompts if "What is on the mat?" in p)
    assert first.startswith(TABLE10_HEAD) and "Magellan" in first
    assert "Caption: a cat lying on a mat\nQuestion: What is on the mat?\nAnswer: cat\nTransformed Answer:" in first
    assert all(r["body"]["model"] == "stub-model" and r["body"]["temperature"] == 0.0 for r in stub.requests)
    # the key was sent ...
    assert all(r["authorization"] == f"Bearer {SECRET}" for r in stub.requests)
    # ... and never lands in a row
    rows = rephrase_rows([_row(0, "vqa-v2", "cat", inputs="What is on the mat?")], provider, {"vqa-v2"})
    assert SECRET not in repr(rows)


def test_openai_provider_500_falls_back_after_retries(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with OpenAIStubServer(fail_with_500=True) as server:
        provider = make_provider(_cfg(server.base_url, max_retries=1, backoff_s=0.01))
        out = provider.rephrase([RephraseItem("What color?", "blue", "en")])
        assert out[0].status == "fallback:error:http_500"
        assert out[0].text == "The answer is blue."
        assert len(server.requests) == 2  # one try + one retry (backoff_s keeps the test fast)
        assert server.requests[0]["authorization"] == "Bearer EMPTY"  # placeholder when the env var is unset


def _row(i, task, answer, split="train", lang="en", inputs="What is it?", meta=None):
    meta = {"source_id": str(i), **(meta or {})}
    return {
        "id": f"{task}-{split}-{i}", "task": task, "category": "vqa" if task != "coco" else "captioning",
        "lang": lang, "split": split, "images": [b"\x89PNG-fake-" + str(i).encode()],
        "instruction": "Answer the question.", "inputs": inputs, "outputs": answer, "meta": json.dumps(meta),
    }


def _write_fixture(root: Path, only: tuple[str, ...] = ("train", "test")) -> dict[str, list[dict]]:
    splits = {
        "train": [
            _row(0, "vqa-v2", "cat", inputs="What is on the mat?", meta={"caption": "a cat on a mat"}),
            _row(1, "vqa-v2", "unknowable", inputs="Who painted this?"),
            _row(2, "coco", "A dog runs on grass.", inputs=""),
            _row(3, "fm-iqa", "猫", lang="zh", inputs="这是什么？", meta={"original_answer": "猫"}),
        ],
        "test": [_row(4, "vqa-v2", "blue", split="test", inputs="What color is the sky?")],
    }
    splits = {k: v for k, v in splits.items() if k in only}
    for split, rows in splits.items():
        d = root / "records" / split
        d.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA), d / "part-0.parquet")
    return splits


def _read(root: Path, only: tuple[str, ...] = ("train", "test")) -> dict[str, dict]:
    out = {}
    for split in only:
        table = pq.read_table(root / "records" / split, schema=RECORD_SCHEMA)
        assert table.schema.equals(RECORD_SCHEMA)
        out.update({r["id"]: r for r in table.to_pylist()})
    return out


def test_stage_template(ray_cluster, tmp_path):
    inputs = _write_fixture(tmp_path / "in")
    cfg = RephraseConfig(provider="template", tasks=["vqa-v2", "fm-iqa"])
    stale = tmp_path / "out" / "records" / "train" / "stale-from-an-earlier-run.parquet"
    stale.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([_row(9, "vqa-v2", "old")], schema=RECORD_SCHEMA), stale)
    counts = rephrase_records(cfg, str(tmp_path / "in"), str(tmp_path / "out"))
    assert counts == {"rephrased": 4, "fallback": 0, "untouched": 1, "by_status": {"template": 4},
                      "requests": 0, "cache_hits": 0, "deduped": 0, "failures": {}, "prompt_tokens": 0,
                      "completion_tokens": 0, "requests_per_min": 0.0}
    rows = _read(tmp_path / "out")
    originals = {r["id"]: r for rs in inputs.values() for r in rs}
    assert set(rows) == set(originals)
    assert rows["coco-train-2"] == originals["coco-train-2"]  # other tasks pass through unchanged
    assert rows["vqa-v2-train-0"]["outputs"] == "The answer is cat."
    assert rows["fm-iqa-train-3"]["outputs"] == "答案是猫。"
    meta = json.loads(rows["vqa-v2-test-4"]["meta"])
    assert meta["original_answer"] == "blue" and meta["source_id"] == "4"
    assert meta["rephrase"] == {"status": "template", "provider": "template", "model": "template",
                                "prompt_version": "basic-template-v1"}
    assert rows["vqa-v2-train-0"]["images"] == originals["vqa-v2-train-0"]["images"]
    assert not stale.exists()  # a re-run replaces a split's output rather than appending to it


def test_stage_openai_actor_pool(ray_cluster, tmp_path, stub):
    os.environ[KEY_ENV] = SECRET  # the driver has the key; workers may or may not inherit it
    try:
        inputs = _write_fixture(tmp_path / "in", only=("train",))  # one split keeps the test fast
        cfg = _cfg(stub.base_url, tasks=["vqa-v2", "fm-iqa"], max_concurrency=4)
        counts = rephrase_records(cfg, str(tmp_path / "in"), str(tmp_path / "out"))
    finally:
        del os.environ[KEY_ENV]
    assert {k: counts[k] for k in ("rephrased", "fallback", "untouched", "by_status", "requests", "cache_hits")} == {
        "rephrased": 2, "fallback": 1, "untouched": 1, "by_status": {"fallback:refusal": 1, "rephrased": 2},
        "requests": 3, "cache_hits": 0}
    assert counts["prompt_tokens"] > 0 and counts["completion_tokens"] > 0 and counts["failures"] == {}
    assert not (tmp_path / "out" / "records" / "test").exists()
    rows = _read(tmp_path / "out", only=("train",))
    originals = {r["id"]: r for rs in inputs.values() for r in rs}
    assert rows["coco-train-2"] == originals["coco-train-2"]
    assert rows["vqa-v2-train-0"]["outputs"] == "Looking at the image, the answer is cat."
    assert rows["vqa-v2-train-1"]["outputs"] == "The answer is unknowable."
    meta = json.loads(rows["vqa-v2-train-1"]["meta"])
    assert meta["original_answer"] == "unknowable"
    assert meta["rephrase"] == {"status": "fallback:refusal", "provider": "openai", "model": "stub-model",
                                "prompt_version": "table10-v1"}
    caption_prompt = [r for r in stub.requests if "What is on the mat?" in r["body"]["messages"][-1]["content"]]
    assert "Caption: a cat on a mat\nQuestion: What is on the mat?" in caption_prompt[0]["body"]["messages"][-1]["content"]
    assert len(stub.requests) == 3
    assert rows["fm-iqa-train-3"]["outputs"] == "根据图片，答案是猫。"
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes()


def test_stage_writes_rows_in_the_order_they_came_in_whichever_actor_answers_first(ray_cluster, tmp_path, stub):
    """Training orders records by seed over the files' rows: the same inputs must write the same files."""
    rows = [_row(i, "vqa-v2" if i % 3 else "coco", f"answer {i}") for i in range(24)]
    d = tmp_path / "in" / "records" / "train"
    d.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA), d / "part-0.parquet")
    os.environ[KEY_ENV] = SECRET
    try:  # batches of one row over two actors: answers come back in whatever order the actors finish
        rephrase_records(_cfg(stub.base_url, tasks=["vqa-v2"], batch_size=1, actors=2),
                         str(tmp_path / "in"), str(tmp_path / "out"))
    finally:
        del os.environ[KEY_ENV]
    written = pq.read_table(tmp_path / "out" / "records" / "train", columns=["id"]).column("id").to_pylist()
    assert written == [r["id"] for r in rows]
