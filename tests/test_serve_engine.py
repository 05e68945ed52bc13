"""Batched generation for Serve, without Ray: per-request limits, stops, streaming, isolation, dtypes.

The model is a random-init tiny Ying-VLM (its answers are gibberish, but greedy decoding makes them
exact, and the per-token cost is the real tiny preset's)."""

from __future__ import annotations

import pytest
import torch

from serve_support import png
from ying.config import load_config
from ying.model.inference import YingPredictor
from ying.model.checkpoint import inference_dtype
from ying.serve.engine import GenerationRequest, load_engine, read_model_limits


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from ying.model.checkpoint import save_checkpoint
    from ying.model.tokenizer import build_tokenizer
    from ying.model.vlm import build_model

    cfg = load_config("tiny")
    tok = build_tokenizer(cfg.model.tokenizer)
    path = str(tmp_path_factory.mktemp("engine") / "ckpt")
    save_checkpoint(build_model(cfg.model, tok, seed=3), tok, cfg.model, path, {"stage": "test"})
    return path


@pytest.fixture(scope="module")
def engine(ckpt):
    return load_engine(ckpt, "test", device="cpu")


def req(color=(200, 30, 30), **kw) -> GenerationRequest:
    base = dict(images=[png(20, 20, color)], instruction="Answer the question.", inputs="What color is it?")
    return GenerationRequest(**{**base, **kw})


def test_greedy_answers_match_the_eval_predictor_with_both_prompts(engine, ckpt):
    predictor = YingPredictor.from_checkpoint(ckpt)
    for zh in (False, True):
        r = req(max_new_tokens=10, chinese_dialogue=zh)
        example = {"images": r.images, "instruction": r.instruction, "inputs": r.inputs}
        expected = predictor.generate([example], chinese_dialogue=zh, max_new_tokens=10)[0]
        got = engine.generate([r])[0]
        assert got.error is None and got.text == expected
        assert got.completion_tokens <= 10 and got.prompt_tokens > 8  # 8 query tokens for the image + the prompt
    # Table 12's dialogue turn comes before the question: a longer prompt.
    assert engine.generate([req(max_new_tokens=1, chinese_dialogue=True)])[0].prompt_tokens > \
        engine.generate([req(max_new_tokens=1)])[0].prompt_tokens


def test_each_request_gets_its_own_token_limit_in_one_batch(engine):
    colors = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    limits = [2, 9, 5]
    alone = [engine.generate([req(c, max_new_tokens=n)])[0] for c, n in zip(colors, limits)]
    together = engine.generate([req(c, max_new_tokens=n) for c, n in zip(colors, limits)])
    for a, t, n in zip(alone, together, limits):
        assert t.text == a.text and t.completion_tokens == a.completion_tokens <= n
        assert t.finish_reason == ("length" if t.completion_tokens == n else "stop")


def test_a_stop_string_ends_the_answer_before_it(engine):
    full = engine.generate([req(max_new_tokens=16)])[0].text
    assert len(full) > 6, full
    stop = full[3:6]
    cut = engine.generate([req(max_new_tokens=16, stop=(stop, "never-appears"))])[0]
    assert cut.finish_reason == "stop" and cut.text == full[: full.index(stop)].strip()
    assert stop not in cut.text


def test_streamed_deltas_add_up_to_the_answer_and_a_bad_request_fails_alone(engine):
    requests = [req((200, 30, 30), max_new_tokens=12), req(images=[b"not an image"]),
                req((30, 30, 200), max_new_tokens=7, stop=("zz",))]
    events: list[tuple[int, dict]] = []
    results = engine.generate(requests, on_event=lambda i, e: events.append((i, e)))
    assert results[1].error and "could not prepare the input" in results[1].error
    for i, r in enumerate(results):
        mine = [e for j, e in events if j == i]
        assert [e for e in mine if "finish" in e] == [{"finish": r}], i  # exactly one finish, last
        assert "finish" in mine[-1]
        assert "".join(e["delta"] for e in mine if "delta" in e) == r.text
    for i in (0, 2):  # the good requests answer as they would alone
        assert results[i].text == engine.generate([requests[i]])[0].text


def test_a_batch_that_fails_is_answered_one_request_at_a_time(engine, monkeypatch):
    requests = [req((200, 30, 30), max_new_tokens=4), req((30, 200, 30), max_new_tokens=4)]
    expected = [engine.generate([r])[0].text for r in requests]
    lm = engine.model.language_model
    real = lm.forward

    def fails_on_batches(**kw):  # e.g. out of memory for the group's prefill, not for one request
        embeds = kw.get("inputs_embeds")
        if embeds is not None and embeds.shape[0] > 1:
            raise RuntimeError("out of memory (simulated)")
        return real(**kw)

    monkeypatch.setattr(lm, "forward", fails_on_batches)
    results = engine.generate(requests)
    assert [r.text for r in results] == expected and all(r.error is None for r in results)


def test_sampling_rows_leave_greedy_rows_greedy(engine):
    greedy = engine.generate([req(max_new_tokens=8)])[0].text
    torch.manual_seed(0)
    mixed = engine.generate([req(max_new_tokens=8), req((9, 9, 9), max_new_tokens=8, temperature=1.5, top_p=0.9)])
    assert mixed[0].text == greedy and mixed[1].error is None and mixed[1].completion_tokens >= 1


def test_models_load_in_the_config_dtype_on_a_gpu_and_float32_on_the_cpu(ckpt):
    # One rule for eval, Serve and the ablations: the model's configured dtype on a GPU (None: ZeRO-3
    # places it there), float32 on a CPU, where 16-bit matmuls are slow.
    assert inference_dtype("cuda", "bfloat16") == inference_dtype("cuda:1", "bfloat16") == "bfloat16"
    assert inference_dtype(None, "float16") == "float16"
    assert inference_dtype("cpu", "bfloat16") == inference_dtype(torch.device("cpu"), "float16") == "float32"
    assert load_engine(ckpt, "t", device="cpu").dtype == torch.float32
    # The GPU path's dtype runs end to end (here on the CPU): weights, images and generation in bfloat16.
    bf16 = load_engine(ckpt, "t", device="cpu", dtype="bfloat16")
    assert bf16.dtype == torch.bfloat16
    out = bf16.generate([req(max_new_tokens=3)])[0]
    assert out.error is None and out.completion_tokens >= 1


def test_model_limits_come_from_the_checkpoint(ckpt):
    limits = read_model_limits(ckpt)
    cfg = load_config("tiny").model
    assert (limits.num_query_tokens, limits.max_text_tokens, limits.max_positions) == (
        cfg.num_query_tokens, cfg.max_text_tokens, cfg.llm.max_position_embeddings)
    assert limits.max_new_tokens(2) == cfg.llm.max_position_embeddings - 2 * cfg.num_query_tokens - 1 - cfg.max_text_tokens
