"""Refusals judged as refusals (issue 16, part 5): the rephrase check rejects a rewrite as ``refusal`` when
it disclaims or deflects instead of answering, not because it holds a word like "sorry" or "unable".

The corpus (tests/fixtures/refusals/rewrites.jsonl): question, original answer, optional context (the
prompt's OCR tokens / caption lines), the rewrite, ``label`` (``keep`` / ``refusal``) and a note. Ids
below 200 were written before the detector; the 2xx and 3xx items were written afterwards as held-out
probes (the detector was then fixed for the shapes they exposed; keep-302 is a known miss, see its
note). ``benchmarks/bench_refusals.py`` prints the same figures and the misclassified items.
"""

import json
import re
import sys
from pathlib import Path

import pytest

from ying.data.rephrase.prompt import RephraseItem, check_rephrasing, refusal_evidence

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_refusals import CORPUS, judge_corpus, load_corpus  # noqa: E402

TRIGGERS = re.compile(r"sorry|unable|cannot|not sure", re.IGNORECASE)


@pytest.fixture(scope="module")
def corpus():
    return load_corpus(CORPUS)


def test_the_corpus_is_what_the_goal_is_measured_on(corpus):
    keep = [r for r in corpus if r["label"] == "keep"]
    refusals = [r for r in corpus if r["label"] == "refusal"]
    assert {r["label"] for r in corpus} == {"keep", "refusal"}
    assert len({r["id"] for r in corpus}) == len(corpus)
    assert all(r["question"] and r["answer"] and r["rewrite"] and r["note"] for r in corpus)
    # good rewrites that hold the words the old phrase list rejected, and real refusals, both varied
    assert sum(bool(TRIGGERS.search(r["rewrite"])) for r in keep) >= 30
    assert len(refusals) >= 30 and len({r["rewrite"] for r in refusals}) == len(refusals)
    assert {r["kind"] for r in refusals} >= {"colour", "count", "yesno", "object", "ocr", "reasoning"}


def test_the_check_meets_the_goal_on_the_corpus(corpus):
    result = judge_corpus(corpus)
    assert result["n"] == len(corpus)
    assert result["recall"] >= 0.95 and result["precision"] >= 0.95, result["misclassified"]
    # a rewrite labelled good that the check rejects for another reason would be a corpus error
    assert result["kept_rejected_otherwise"] == []


def test_the_benchmark_prints_precision_recall_and_the_misclassified_items(capsys):
    from bench_refusals import main

    assert main([]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"precision", "recall", "misclassified", "tp", "fp", "fn", "tn"} <= set(last)
    assert last["tp"] + last["fn"] >= 30


@pytest.mark.parametrize("question,answer,rewrite", [
    ("Can the dog jump over the fence?", "no", "No, the dog is unable to jump."),
    ("What does the sign say?", "stop", "Sorry to say, the sign reads STOP."),  # apology as a turn of phrase
    ("Is the bird able to fly?", "no", "No, the bird cannot fly because its wing is bandaged."),
    ("Is the man sure of the way?", "no", "No, he is not sure where he is going and is reading a map."),
    ("Did the team win?", "no", "Unfortunately, the home team did not win the match."),
    ("Can you see the mountains?", "no", "No, the mountains cannot be seen for the fog."),  # the question's topic
    ("What color is the car?", "red", "I can't help but notice the car is bright red."),
    ("Is the store open?", "no", "I'm afraid not; the store has closed for the night."),
])
def test_rewrites_that_assert_the_answer_are_kept(question, answer, rewrite):
    assert check_rephrasing(rewrite, answer, question) is None


@pytest.mark.parametrize("question,answer,rewrite", [
    ("What color is the car?", "red", "I'm sorry, but I cannot determine that from the image."),
    ("What breed is the dog?", "labrador", "As an AI, I am not able to see images."),
    ("What color is the car?", "blue", "Unfortunately the caption does not say what colour the car is."),
    ("Is the sign red?", "yes", "I cannot tell whether it is red."),  # the answer only inside the disclaimer
    ("Is the sign red?", "red", "I cannot tell whether it is red."),
    ("What is on the table?", "cup", "I don't know."),
    ("How many people are there?", "5", "The number of people cannot be determined from this picture."),
    ("What room is this?", "kitchen", "There is not enough information to tell which room this is."),
    ("What does the sign say?", "stop", "Sorry, the sign is too far away."),  # an apology that replaces the answer
    # an answer after a disclaimer is a guess, or tells the user the picture was never looked at
    ("What color is the bird?", "yellow", "I'm not sure what color the bird is, but it could be yellow."),
    ("What color is the car?", "red", "As an AI language model, I cannot see images, but the car is red."),
])
def test_disclaimers_and_deflections_are_refusals(question, answer, rewrite):
    assert check_rephrasing(rewrite, answer, question) == "refusal"


def test_what_the_sources_say_or_the_rewrite_quotes_is_no_refusal():
    shirt = RephraseItem("What text is on the T-shirt?", "i'm not sure", context="OCR tokens: I'M, NOT, SURE")
    assert check_rephrasing("The T-shirt says I'm not sure in big letters.", shirt.expected, shirt.sources) is None
    # the same words said by the assistant, about a question that did not hold them
    assert check_rephrasing("I'm not sure what the T-shirt says.", "hello", "What text is on the T-shirt?") == "refusal"
    quoted = "The mug reads \u201cI cannot function without coffee.\u201d"
    assert check_rephrasing(quoted, "coffee", "What is written on the mug?") is None
    assert check_rephrasing("The mug reads 'I don't know', in red.", "i don't know", "What is on the mug?") is None


def test_context_labels_are_not_the_question_asking_about_captions():
    # VQA v2 prompts carry "Caption: ..."; that label must not excuse "according to the caption".
    item = RephraseItem("What color is the car?", "red", context="Caption: a red car by a tree")
    assert check_rephrasing("According to the caption, the car is red.", item.expected, item.sources) == "refusal"
    # where the question itself is about a caption printed on the photo, the word is the question's
    assert check_rephrasing("The caption under the photo says summer 1998.", "summer 1998",
                            "What does the caption under the photo say?") is None


def test_evidence_names_the_signal_that_decided():
    ev = refusal_evidence("Sorry, I can't identify the brand.", "apple", "What brand is the laptop?")
    assert ev is not None and ev.strength == "strong" and ev.text == "i can't identify"
    assert refusal_evidence("No, the dog is unable to jump.", "no", "Can the dog jump?") is None


def test_chinese_rewrites_do_not_crash_and_obvious_refusals_are_caught():
    assert check_rephrasing("抱歉，我无法从图片中确定答案。", "猫", "这是什么动物？") == "refusal"
    assert check_rephrasing("作为一个AI语言模型，我看不到图片。", "红色", "车是什么颜色？") == "refusal"
    assert check_rephrasing("图片里是一只猫。", "猫", "这是什么动物？") is None
    assert check_rephrasing("不能，狗无法跳过这么高的栅栏。", "不能", "狗能跳过栅栏吗？") is None  # the dog cannot
    assert check_rephrasing("抱歉，车是红色的。", "红色", "车是什么颜色？") is None  # apology beside the answer
