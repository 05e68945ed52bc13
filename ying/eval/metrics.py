"""Answer-quality metrics: ROUGE-L (the paper's automatic metric, §3.1.2) and exact match.

English ROUGE-L is ``rouge_score``'s own (word tokens, no stemming), so numbers match the package
exactly. ``rouge_score``'s default tokenizer drops every non-ASCII character, which would score all
Chinese text as empty; Chinese is therefore scored over characters, with whitespace and punctuation
ignored, by handing RougeScorer a character tokenizer (the LCS and F-measure are still the package's).
"""

from __future__ import annotations

import re

from rouge_score import rouge_scorer

from ying.text import CJK, char_tokens, normalize_answer  # shared with the rephrase acceptance check

__all__ = [
    "ROUGE_TOKENIZERS",
    "rouge_l",
    "normalize_answer",
    "exact_match",
    "char_tokens",
    "parse_options",
    "parse_choice",
    "option_accuracy",
]

ROUGE_TOKENIZERS = {
    "en": "rouge_score default tokenizer (lowercased ASCII words [a-z0-9]+, no stemming); ROUGE-L F-measure",
    "zh": "characters (lowercased; whitespace and Unicode punctuation/symbols removed); ROUGE-L F-measure over the character LCS",
}

class _CharTokenizer:
    """The ``tokenize(text) -> list[str]`` interface that RougeScorer(tokenizer=...) expects."""

    def tokenize(self, text: str) -> list[str]:
        return char_tokens(text)


_SCORERS = {
    "en": rouge_scorer.RougeScorer(["rougeL"]),
    "zh": rouge_scorer.RougeScorer(["rougeL"], tokenizer=_CharTokenizer()),
}


def rouge_l(prediction: str, reference: str, lang: str = "en") -> float:
    """ROUGE-L F-measure in [0, 1]; ``lang`` picks the tokenizer (see ROUGE_TOKENIZERS)."""
    scorer = _SCORERS.get(lang)
    if scorer is None:
        raise ValueError(f"rouge_l: unsupported lang {lang!r}; expected one of {sorted(_SCORERS)}")
    # RougeScorer.score takes (target, prediction).
    return float(scorer.score(reference or "", prediction or "")["rougeL"].fmeasure)


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalized texts are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


# "(A) cat (B) dog", "(A)薯条 (B)凉拌西红柿": a capital letter in brackets, then the label up to the next one.
_OPTION = re.compile(r"\(([A-Z])\)\s*(.*?)\s*(?=\([A-Z]\)|$)", re.S)
# A bare letter counts alone ("G", "answer: G") or with a closing mark ("G.", "G)"), never before a
# word: "A dog" is an article, not option A.
_LEADING_LETTER = re.compile(r"^\s*(?:answer(?:\s+is)?\s*:?\s*)?([A-Za-z])(?:\s*[.:)]|\s*$)", re.I)


def parse_options(text: str) -> dict[str, str]:
    """Lettered options in ``text``: ``{"A": "cat", "B": "dog"}`` (empty when there are none)."""
    return {m.group(1): m.group(2).strip() for m in _OPTION.finditer(text or "")}


def parse_choice(prediction: str, options: dict[str, str]) -> str | None:
    """The option letter a free-text answer picks: "(G)", "G", "G. pizza", or the label text alone.

    A bracketed letter anywhere wins; then a bare leading letter that is one of the options; then a
    label whose normalized text equals the answer or, failing that, is the only label the answer
    contains. None when the answer names no option or several.
    """
    text = (prediction or "").strip()
    bracketed = [m.group(1) for m in _OPTION.finditer(text) if m.group(1) in options]
    if bracketed:
        return bracketed[0]
    m = _LEADING_LETTER.match(text)
    if m and m.group(1).upper() in options:
        return m.group(1).upper()
    answer = normalize_answer(text)
    labels = {letter: normalize_answer(label) for letter, label in options.items()}
    exact = [letter for letter, label in labels.items() if label and label == answer]
    if len(exact) == 1:
        return exact[0]
    contained = [letter for letter, label in labels.items() if label and _contains_label(answer, label)]
    # "hot dog" contains "dog": keep only the labels not inside another contained label.
    contained = [a for a in contained if not any(a != b and labels[a] in labels[b] for b in contained)]
    return contained[0] if len(contained) == 1 else None


def _contains_label(answer: str, label: str) -> bool:
    if re.search(f"[{CJK}]", label):  # Chinese has no word boundaries: a substring is a mention
        return label in answer
    return re.search(rf"(?<!\w){re.escape(label)}(?!\w)", answer) is not None


def option_accuracy(prediction: str, reference: str, inputs: str) -> float | None:
    """1.0 when the prediction picks the reference's option, 0.0 otherwise; None when ``inputs`` lists no options.

    The reference is the record's output ("(B) dog", or just "dog"); the options come from the
    record's inputs.
    """
    options = parse_options(inputs)
    if not options:
        return None
    gold = parse_choice(reference, options)
    if gold is None:
        raise ValueError(f"reference {reference!r} names none of the options {options}")
    return float(parse_choice(prediction, options) == gold)
