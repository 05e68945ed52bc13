"""Text normalisation shared by the data pipeline (the rephrase acceptance check) and the metrics
(exact match, Chinese ROUGE): one definition, so a rewrite is judged by the rule answers are scored by.
"""

from __future__ import annotations

import re
import string
import unicodedata

__all__ = ["normalize_answer", "char_tokens", "is_punct", "CJK"]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_SPACE_BETWEEN_CJK = re.compile(rf"(?<=[{CJK}]) (?=[{CJK}])")


def is_punct(ch: str) -> bool:
    """ASCII punctuation, and every Unicode punctuation or symbol (CJK full-width marks included)."""
    return ch in string.punctuation or unicodedata.category(ch)[0] in ("P", "S")


def char_tokens(text: str) -> list[str]:
    """One token per character, skipping whitespace and punctuation (the Chinese ROUGE unit)."""
    return [ch for ch in text.lower() if not ch.isspace() and not is_punct(ch)]


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation (ASCII and CJK) and English articles, collapse spaces; CJK kept."""
    text = (text or "").lower()
    text = "".join(ch for ch in text if not is_punct(ch))  # SQuAD-style: punctuation deleted
    text = _ARTICLES.sub(" ", text)
    text = " ".join(text.split())
    return _SPACE_BETWEEN_CJK.sub("", text)  # Chinese has no word spaces: "答案 是" == "答案是"
