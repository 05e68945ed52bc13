"""Answer-quality metrics: ROUGE-L (the paper's automatic metric, §3.1.2) and exact match.

English ROUGE-L is ``rouge_score``'s own (word tokens, no stemming), so numbers match the package
exactly. ``rouge_score``'s default tokenizer drops every non-ASCII character, which would score all
Chinese text as empty; Chinese is therefore scored over characters, with whitespace and punctuation
ignored, by handing RougeScorer a character tokenizer (the LCS and F-measure are still the package's).
"""

from __future__ import annotations

import re
import string
import unicodedata

from rouge_score import rouge_scorer

__all__ = ["ROUGE_TOKENIZERS", "rouge_l", "normalize_answer", "exact_match", "char_tokens"]

ROUGE_TOKENIZERS = {
    "en": "rouge_score default tokenizer (lowercased ASCII words [a-z0-9]+, no stemming); ROUGE-L F-measure",
    "zh": "characters (lowercased; whitespace and Unicode punctuation/symbols removed); ROUGE-L F-measure over the character LCS",
}

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_SPACE_BETWEEN_CJK = re.compile(rf"(?<=[{_CJK}]) (?=[{_CJK}])")


def _is_punct(ch: str) -> bool:
    return ch in string.punctuation or unicodedata.category(ch)[0] in ("P", "S")


def char_tokens(text: str) -> list[str]:
    """One token per character, skipping whitespace and punctuation (the Chinese ROUGE unit)."""
    return [ch for ch in text.lower() if not ch.isspace() and not _is_punct(ch)]


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


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation (ASCII and CJK) and English articles, collapse spaces; CJK kept."""
    text = (text or "").lower()
    text = "".join(ch for ch in text if not _is_punct(ch))  # SQuAD-style: punctuation deleted
    text = _ARTICLES.sub(" ", text)
    text = " ".join(text.split())
    return _SPACE_BETWEEN_CJK.sub("", text)  # Chinese has no word spaces: "答案 是" == "答案是"


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalized texts are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))
