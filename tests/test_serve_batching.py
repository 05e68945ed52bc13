"""Continuous batching (ying.serve.engine.ContinuousBatcher), without Ray: requests that join a
running batch, or share one with longer requests, get the answers they get alone, and a request
that ends leaves the batch (it stops costing decoding steps and is answered at once).

The model is a random-init tiny Ying-VLM; greedy decoding makes its answers exact."""

from __future__ import annotations

import threading

import pytest

from serve_support import png
from ying.config import load_config
from ying.serve.engine import ContinuousBatcher, GenerationRequest, load_engine


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from ying.model.checkpoint import save_checkpoint
    from ying.model.tokenizer import build_tokenizer
    from ying.model.vlm import build_model

    cfg = load_config("tiny")
    tok = build_tokenizer(cfg.model.tokenizer)
    path = str(tmp_path_factory.mktemp("batching") / "ckpt")
    save_checkpoint(build_model(cfg.model, tok, seed=5), tok, cfg.model, path, {"stage": "test"})
    return load_engine(path, "test", device="cpu")


def req(color, question="What color is it?", **kw) -> GenerationRequest:
    return GenerationRequest(images=[png(20, 20, color)], instruction="Answer the question.", inputs=question, **kw)


class Calls:
    """What a batcher emits for each request: its deltas, its finish, and when it finished."""

    def __init__(self):
        self.events: dict[int, list[dict]] = {}
        self.order: list[int] = []
        self.lock = threading.Lock()
        self.finished = threading.Condition(self.lock)

    def emit(self, i: int):
        def on(event: dict) -> None:
            with self.lock:
                self.events.setdefault(i, []).append(event)
                if "finish" in event:
                    self.order.append(i)
                    self.finished.notify_all()
        return on

    def wait(self, n: int, timeout: float = 120) -> None:
        with self.lock:
            assert self.finished.wait_for(lambda: len(self.order) >= n, timeout), self.order

    def result(self, i: int):
        return [e["finish"] for e in self.events[i] if "finish" in e][0]


def test_requests_sharing_a_batch_answer_as_alone_and_leave_it_when_they_end(engine):
    # Prompts of different lengths (left padding in the batch) and their own limits.
    requests = [req((200, 30, 30), max_new_tokens=3), req((30, 200, 30), "Which colour fills most of it?", max_new_tokens=12),
                req((30, 30, 200), "Colour?", max_new_tokens=7), req((90, 90, 90), max_new_tokens=1)]
    alone = [engine.generate([r])[0] for r in requests]
    batcher = ContinuousBatcher(engine, max_batch_size=8, batch_wait_timeout_s=5.0)
    calls = Calls()
    for i, r in enumerate(requests):  # a burst: the idle batcher gathers it into one prefill
        batcher.submit(r, calls.emit(i))
    calls.wait(len(requests))
    for i, a in enumerate(alone):
        got = calls.result(i)
        assert (got.text, got.finish_reason, got.completion_tokens, got.error) == \
            (a.text, a.finish_reason, a.completion_tokens, None), i
        assert [e for e in calls.events[i] if "delta" in e] == []  # not streamed: one event
    stats = batcher.stats.as_dict()
    assert stats["prefills"] == {4: 1} and stats["requests"] == 4
    # The first token comes from the prefill; each later token is one row of one decoding step, and
    # a row that ended (its limit, or EOS, chosen but not counted) is in no later step.
    chosen = [a.completion_tokens + (a.finish_reason == "stop") for a in alone]
    assert sum(k * v for k, v in stats["rows_per_step"].items()) == sum(c - 1 for c in chosen)
    assert stats["steps"] == max(chosen) - 1
    # Answered as each ended, shortest first: none waited for the longest.
    assert calls.order == sorted(range(len(requests)), key=lambda i: (chosen[i], i))


def test_a_request_joins_a_running_batch_at_its_next_step(engine):
    long, late = req((200, 30, 30), max_new_tokens=24), req((30, 30, 200), "A longer question about its colour?",
                                                             max_new_tokens=6)
    alone = [engine.generate([r])[0] for r in (long, late)]
    assert alone[0].completion_tokens > alone[1].completion_tokens + 6, "the test needs a long and a short answer"
    batcher = ContinuousBatcher(engine, max_batch_size=8, batch_wait_timeout_s=0.0)
    calls = Calls()
    joined = threading.Event()

    def on_long(event: dict) -> None:
        calls.emit(0)(event)
        if "delta" in event and not joined.is_set():  # the long request is decoding: send the next
            joined.set()
            batcher.submit(late, calls.emit(1), stream=True)

    batcher.submit(long, on_long, stream=True)
    calls.wait(2)
    for i, a in enumerate(alone):
        got = calls.result(i)
        assert (got.text, got.completion_tokens, got.error) == (a.text, a.completion_tokens, None), i
        assert "".join(e["delta"] for e in calls.events[i] if "delta" in e) == got.text
    stats = batcher.stats.as_dict()
    assert stats["prefills"] == {1: 2}  # two prefills of one request each ...
    assert 2 in stats["rows_per_step"]  # ... decoded together once the second joined
    assert calls.order == [1, 0]  # the late, short request did not wait for the long one to end


def test_one_at_a_time_when_max_batch_size_is_1(engine):
    requests = [req((200, 30, 30), max_new_tokens=5), req((30, 200, 30), max_new_tokens=5)]
    alone = [engine.generate([r])[0].text for r in requests]
    batcher = ContinuousBatcher(engine, max_batch_size=1, batch_wait_timeout_s=0.0)
    calls = Calls()
    for i, r in enumerate(requests):
        batcher.submit(r, calls.emit(i))
    calls.wait(2)
    assert [calls.result(i).text for i in range(2)] == alone
    assert set(batcher.stats.as_dict()["rows_per_step"]) <= {1}


def test_a_bad_request_fails_alone_and_the_batcher_keeps_answering(engine):
    batcher = ContinuousBatcher(engine, max_batch_size=4, batch_wait_timeout_s=1.0)
    calls = Calls()
    batcher.submit(GenerationRequest(images=[b"not an image"], instruction="Answer."), calls.emit(0))
    batcher.submit(req((30, 200, 30), max_new_tokens=4), calls.emit(1))
    calls.wait(2)
    assert "could not prepare the input" in calls.result(0).error
    assert calls.result(1).error is None and calls.result(1).text == engine.generate([req((30, 200, 30), max_new_tokens=4)])[0].text
    batcher.submit(req((200, 200, 30), max_new_tokens=2), calls.emit(2))  # the thread ended when idle: a new one starts
    calls.wait(3)
    assert calls.result(2).error is None


def test_a_cancelled_request_leaves_the_batch_unanswered(engine):
    # A client that closed its stream: its row stops costing steps; the others are unaffected.
    keep, drop = req((30, 200, 30), max_new_tokens=10), req((200, 30, 30), max_new_tokens=30)
    expected = engine.generate([keep])[0]
    batcher = ContinuousBatcher(engine, max_batch_size=4, batch_wait_timeout_s=5.0)
    calls = Calls()
    rows = {}

    def on_drop(event: dict) -> None:
        calls.emit(1)(event)
        rows[1].cancel()  # after its first delta

    batcher.submit(keep, calls.emit(0))
    rows[1] = batcher.submit(drop, on_drop, stream=True)
    calls.wait(1)
    assert calls.result(0).text == expected.text
    stats = batcher.stats.as_dict()
    assert [e for e in calls.events[1] if "finish" in e] == []
    # Both decoded together until the cancel, then the kept row alone: the batch ran no longer than
    # the kept row needed, though the dropped one asked for 30 tokens.
    chosen = expected.completion_tokens + (expected.finish_reason == "stop")
    assert stats["steps"] == chosen - 1 and stats["rows_per_step"].get(1, 0) >= 1, stats
