"""The LLM judge (Figure 4, Appendix G; Table 8) against a local OpenAI-compatible server over HTTP."""

import pytest

from judge_stub_server import JudgeStubServer
from ying.eval.judge import (
    PAIRWISE_TEMPLATE,
    JudgeClient,
    judge_pairwise,
    judge_video_accuracy,
    parse_pair_scores,
    parse_yes_no,
)


@pytest.mark.parametrize("text,expected", [
    ("Evaluation evidence: Assistant 1 is accurate but terse...\nThe score of Assistant 1: 8\nThe score of Assistant 2: 6",
     (8.0, 6.0)),
    ("Evaluation evidence: ...\n\n**The score of Assistant 1:** 7.5\n**The score of Assistant 2:** 9", (7.5, 9.0)),
    ("The score of assistant 1 is 4\nthe score of Assistant 2 is 10", (4.0, 10.0)),
    # a judge that restates the format first and then scores: the last scores count
    ("Output: The score of Assistant 1: <score>\nThe score of Assistant 1: 5\nThe score of Assistant 2: 5", (5.0, 5.0)),
    ("Evaluation evidence: first draft 3 vs 4.\nThe score of Assistant 1: 3\nThe score of Assistant 2: 4\n"
     "On reflection:\nThe score of Assistant 1: 6\nThe score of Assistant 2: 4", (6.0, 4.0)),
    ("Both are good.", None),
    ("The score of Assistant 1: 8", None),  # one score is not a verdict
    ("The score of Assistant 1: 80\nThe score of Assistant 2: 7", None),  # off the 1-10 scale
])
def test_parse_pair_scores_realistic_outputs(text, expected):
    assert parse_pair_scores(text) == expected


def test_parse_yes_no():
    assert parse_yes_no("Yes.\nThe prediction names the same object.") is True
    assert parse_yes_no("no - it says blue") is False
    assert parse_yes_no("Maybe") is None
    assert parse_yes_no("") is None


def test_template_is_table_13():
    for part in ("[Question]\n{Q}", "[The Start of Reference Answer]\n{R}", "[The Start of Assistant 1's Answer]\n{R1}",
                 "[The Start of Assistant 2's Answer]\n{R2}", "1. Accuracy:", "2. Relevance:", "3. Naturalness:",
                 "The score of Assistant 1: <score>\nThe score of Assistant 2: <score>"):
        assert part in PAIRWISE_TEMPLATE


ITEMS = [  # ours is right on 0 and 2, the baseline on 1, neither on 5; 3 makes the server fail; 4 garbles
    {"id": "0", "question": "What animal?", "reference": "a zebra", "ours": "It is a zebra.", "baseline": "A horse."},
    {"id": "1", "question": "What city?", "reference": "paris", "ours": "London.", "baseline": "This is Paris."},
    {"id": "2", "question": "Which sport?", "reference": "tennis", "ours": "They play tennis.", "baseline": "Golf."},
    {"id": "3", "question": "FAIL please", "reference": "x", "ours": "x", "baseline": "y"},
    {"id": "4", "question": "GARBLE please", "reference": "x", "ours": "x", "baseline": "y"},
    {"id": "5", "question": "What colour?", "reference": "red", "ours": "Blue.", "baseline": "Green."},
]


def _client(stub, tmp_path, **kw):
    return JudgeClient(stub.base_url, "judge-model", "test-key", str(tmp_path / "cache"), max_retries=0, **kw)


def test_pairwise_both_orders_three_samples_and_failures_missing(tmp_path):
    # The judge gives Assistant 1 one point more: asked in one order only, item 5 (both wrong) would be
    # a win for whoever came first; both orders cancel the bias into a tie.
    with JudgeStubServer(first_bonus=1) as stub:
        result = judge_pairwise(_client(stub, tmp_path), ITEMS, samples=3)
        prompts = [r["prompt"] for r in stub.requests]
    assert len(prompts) == len(ITEMS) * 2 * 3
    assert {r["temperature"] for r in stub.requests} == {1.0}
    assert {r["authorization"] for r in stub.requests} == {"Bearer test-key"}
    # Both orders were asked: ours is Assistant 1 in one prompt and Assistant 2 in the other.
    assert any("Assistant 1's Answer]\nIt is a zebra." in p for p in prompts)
    assert any("Assistant 2's Answer]\nIt is a zebra." in p for p in prompts)
    assert (result["win"], result["tie"], result["lose"]) == (2, 1, 1)
    assert (result["judged"], result["total"]) == (4, 6)  # the failed and the unparseable are missing
    assert result["coverage"] == pytest.approx(4 / 6)
    assert result["failed"] == 6 and result["unparsed"] == 6
    details = {d["id"]: d for d in result["items"]}
    # six scores averaged: 10 (first, +1 bias) three times and 9 (second) three times
    assert details["0"]["ours"] == pytest.approx(9.5) and details["0"]["baseline"] == pytest.approx(3.5)
    assert details["0"]["n_scores"] == 6
    assert details["5"]["ours"] == details["5"]["baseline"] == pytest.approx(3.5)
    assert details["3"] == {"id": "3", "judged": False}


def test_rerun_pays_nothing_and_failures_are_retried(tmp_path):
    with JudgeStubServer() as stub:
        first = judge_pairwise(_client(stub, tmp_path), ITEMS[:3] + ITEMS[3:4], samples=3)
        n_first = len(stub.requests)
        second = judge_pairwise(_client(stub, tmp_path), ITEMS[:3] + ITEMS[3:4], samples=3)
        sent_again = stub.requests[n_first:]
    assert first["sent"] == 24 and second["cached"] == 18
    # only the failed item is asked again; its failures were not cached
    assert len(sent_again) == 6 and all("FAIL" in r["prompt"] for r in sent_again)
    assert {k: second[k] for k in ("win", "tie", "lose")} == {k: first[k] for k in ("win", "tie", "lose")}


def test_video_accuracy_judging(tmp_path):
    items = [{"question": "what shape is moving?", "reference": "circle", "prediction": "A circle is moving."},
             {"question": "which way?", "reference": "left", "prediction": "right"},
             {"question": "FAIL", "reference": "x", "prediction": "x"}]
    with JudgeStubServer() as stub:
        r = judge_video_accuracy(_client(stub, tmp_path), items)
    assert r["accuracy"] == pytest.approx(1 / 2)
    assert (r["judged"], r["total"], r["failed"]) == (2, 3, 1)


def test_unreachable_server_counts_everything_missing(tmp_path):
    client = JudgeClient("http://127.0.0.1:9/v1", "m", "k", str(tmp_path), timeout_s=2, max_retries=0)
    r = judge_pairwise(client, ITEMS[:1], samples=1)
    assert (r["judged"], r["coverage"], r["failed"]) == (0, 0.0, 2)
