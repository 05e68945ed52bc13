import json

import pytest
from rouge_score import rouge_scorer

from ying.eval import (
    ROUGE_TOKENIZERS,
    MajorityAnswerBaseline,
    exact_match,
    normalize_answer,
    render_report,
    rouge_l,
    score_predictions,
    write_metrics,
)

EN_PAIRS = [
    ("The cat is sitting on the mat.", "A cat sat on the mat."),
    ("Magellan", "NASA sent the Magellan spacecraft to Venus in 1989."),
    ("yes", "Yes, there is a dog in the picture."),
    ("two red buses", "There are two buses, both red."),
    ("", "anything"),
    ("completely unrelated words", "the answer is blue"),
]


@pytest.mark.parametrize("pred,ref", EN_PAIRS)
def test_rouge_l_english_equals_rouge_score(pred, ref):
    expected = rouge_scorer.RougeScorer(["rougeL"]).score(ref, pred)["rougeL"].fmeasure
    assert rouge_l(pred, ref, "en") == pytest.approx(expected, abs=1e-12)


def _f(p, r):
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


@pytest.mark.parametrize(
    "pred,ref,lcs",
    [
        ("一只红色的猫", "一只猫", 3),  # LCS 一只猫
        ("答案是：猫。", "猫", 1),  # punctuation ignored: 4 chars vs 1
        ("一 只 猫", "一只猫", 3),  # whitespace ignored
        ("狗", "猫", 0),
    ],
)
def test_rouge_l_chinese_by_characters(pred, ref, lcs):
    n_pred = len([c for c in pred if c not in " ：。"])
    n_ref = len(ref)
    expected = _f(lcs / n_pred, lcs / n_ref)
    assert rouge_l(pred, ref, "zh") == pytest.approx(expected)


def test_rouge_l_chinese_worked_example():
    # P = 3/6, R = 3/3, F = 2PR/(P+R) = 2/3
    assert rouge_l("一只红色的猫", "一只猫", "zh") == pytest.approx(2 / 3)


def test_rouge_l_rejects_unknown_lang():
    with pytest.raises(ValueError, match="unsupported lang"):
        rouge_l("a", "b", "fr")


def test_normalize_and_exact_match():
    assert normalize_answer("  The Cat, sat!  ") == "cat sat"
    assert normalize_answer("答案是：猫。") == "答案是猫"
    assert normalize_answer("答案 是 猫") == "答案是猫"
    assert exact_match("The Eiffel Tower.", "eiffel tower") == 1.0
    assert exact_match("an apple", "Apple!") == 1.0
    assert exact_match("猫。", "猫") == 1.0
    assert exact_match("two", "2") == 0.0
    assert set(ROUGE_TOKENIZERS) == {"en", "zh"}


def _rec(i, task, outputs, split="train", lang="en", meta=None):
    return {"id": f"{task}-{split}-{i}", "task": task, "lang": lang, "split": split, "outputs": outputs,
            "meta": json.dumps(meta or {})}


def test_majority_baseline():
    train = [_rec(0, "vqa", "yes"), _rec(1, "vqa", "no"), _rec(2, "vqa", "yes"),
             _rec(3, "cap", "a dog"), _rec(4, "cap", "a cat")]
    base = MajorityAnswerBaseline().fit(train)
    assert base.predict({"task": "vqa"}) == "yes"
    assert base.predict({"task": "cap"}) == "a cat"  # tie broken alphabetically, order-free
    assert base.predict({"task": "unseen"}) == "yes"  # global majority
    test = [_rec(9, "vqa", "yes", "test"), _rec(8, "vqa", "no", "test")]
    assert base.predict_many(test) == {"vqa-test-9": "yes", "vqa-test-8": "yes"}
    scores = score_predictions(test, base.predict_many(test))
    assert scores == {"vqa": {"exact_match": 0.5, "rouge_l": 0.5, "n": 2}}
    with pytest.raises(ValueError):
        MajorityAnswerBaseline().fit([])


def test_score_write_and_render(tmp_path):
    recs = [
        _rec(0, "vqa", "The answer is yes.", "test", meta={"original_answer": "yes"}),
        _rec(1, "coco-cn", "一只猫", "test", lang="zh"),
    ]
    preds = {"vqa-test-0": "yes", "coco-cn-test-1": "一只红色的猫"}
    scores = score_predictions(recs, preds)
    assert scores["coco-cn"]["rouge_l"] == pytest.approx(2 / 3)
    assert scores["vqa"]["exact_match"] == 0.0
    assert score_predictions(recs, preds, reference="original_answer")["vqa"]["exact_match"] == 1.0
    # a sequence aligned with the records works too; a missing prediction scores 0
    assert score_predictions(recs, ["yes", "一只猫"])["coco-cn"]["exact_match"] == 1.0
    assert score_predictions(recs, {})["vqa"] == {"exact_match": 0.0, "rouge_l": 0.0, "n": 1}

    metrics = {"ying-vlm": scores, "majority-answer": {"vqa": {"exact_match": 0.0, "rouge_l": 0.1, "n": 1}}}
    path = write_metrics(str(tmp_path / "eval"), metrics)
    assert json.loads(open(path).read()) == metrics
    md = render_report(metrics, {"Hallucination": "CHAIR_I = 1.0"})
    assert "## Exact match" in md and "## ROUGE-L" in md and "## Hallucination" in md
    assert "| model | coco-cn | vqa |" in md
    assert "| majority-answer | – | 10.0 |" in md
    assert "| ying-vlm | 66.7 | 40.0 |" in md  # vqa rouge: "yes" vs "The answer is yes." = 2*(1*0.25)/1.25
    assert ROUGE_TOKENIZERS["zh"] in md
    with pytest.raises(ValueError, match="lacks"):
        write_metrics(str(tmp_path), {"m": {"t": {"rouge_l": 1.0}}})


# ---- option accuracy ---------------------------------------------------------------------------

from ying.eval.metrics import option_accuracy, parse_choice, parse_options  # noqa: E402

OPTS = "Options: (A) hot dog (B) dog (C) cat (G) bird"


@pytest.mark.parametrize("prediction,letter", [
    ("(G)", "G"),
    ("G", "G"),
    ("g", "G"),
    ("G.", "G"),
    ("Answer: G", "G"),
    ("The answer is (C) cat.", "C"),
    ("bird", "G"),  # the label text alone
    ("It is a cat.", "C"),  # the only label named
    ("A dog", "B"),  # "A" is an article here, not option A
    ("hot dog", "A"),  # the longer label wins over the one inside it
    ("a cat or a dog", None),  # two labels: no choice
    ("I can't tell", None),
])
def test_parse_choice(prediction, letter):
    assert parse_choice(prediction, parse_options(OPTS)) == letter


def test_parse_options_english_and_chinese():
    assert parse_options(OPTS) == {"A": "hot dog", "B": "dog", "C": "cat", "G": "bird"}
    zh = parse_options("这是什么食物？(A)薯条 (B)凉拌西红柿 (G)扬州炒饭")
    assert zh == {"A": "薯条", "B": "凉拌西红柿", "G": "扬州炒饭"}
    assert parse_choice("这是扬州炒饭。", zh) == "G"  # Chinese labels match inside a sentence
    assert parse_options("no options here") == {}


def test_option_accuracy():
    assert option_accuracy("(C)", "(C) cat", OPTS) == 1.0
    assert option_accuracy("cat", "(C) cat", OPTS) == 1.0
    assert option_accuracy("dog", "(C) cat", OPTS) == 0.0
    assert option_accuracy("whatever", "cat", "What is it?") is None  # not a multiple-choice record
    with pytest.raises(ValueError, match="names none of the options"):
        option_accuracy("(A)", "(Z) zebra", OPTS)
