"""The Table 10 prompt, the template fallback, and the acceptance check (plain functions, no I/O).

Acceptance rules for an LLM rewrite of a short answer (``check_rephrasing``), in order:

1. ``empty``: nothing left after stripping a leading "Transformed Answer:" and surrounding quotes.
2. ``refusal``: it disclaims or deflects instead of answering (``refusal.py``): the assistant says it
   cannot see, know, tell or determine, that there is not enough information, that it is not sure,
   that it is an AI or answered from a description; or it apologises ("Sorry,", "Unfortunately") and
   does not assert the original answer outside the apology and outside a guess. Only the assistant's
   own inability counts ("No, the dog is unable to jump." is kept); text the rewrite quotes or the
   sources hold is no evidence (a sign reading "Sorry, we're closed"), and denying what the question
   asks about is an answer ("Can you see the mountains?" - "No, they cannot be seen for the fog").
3. ``disagrees``: it does not carry the original answer (the adapter's ``meta.original_answer``: for
   multiple choice the option's text, not its letter), where
   - yes/no answers: "yes" is kept when the sentence has the word "yes", or has no negation word
     (``NEGATIONS``: no, not, n't, never, none, nothing, nobody, neither, nor); "no" is kept when it
     has the word "no" or any negation word;
   - numbers: "2" and "two" are the same answer (digits, or English words zero..twenty and the tens
     up to one hundred); "0" also matches "no" / "none";
   - everything else: the normalized answer (lowercased, punctuation and articles dropped, see
     ``ying.text.normalize_answer``) appears as whole words in the normalized sentence;
     Chinese answers appear as a substring, spaces ignored.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from ying.data.rephrase.refusal import Signal, refusal_evidence as _refusal_evidence
from ying.text import normalize_answer

__all__ = [
    "TABLE10_PROMPT",
    "TEMPLATE_PROMPT_VERSION",
    "NEGATIONS",
    "RephraseItem",
    "RephraseResult",
    "build_prompt",
    "prompt_sha256",
    "template_sentence",
    "clean_response",
    "check_rephrasing",
    "refusal_evidence",
    "context_from_meta",
]

# Table 10, verbatim; the paper's PDF extraction lost the line breaks, restored here. Appendix C adds a
# caption field for VQA v2 and the rationale for A-OKVQA: they go where {context} is, labelled.
TABLE10_PROMPT = (
    "You are an AI visual assistant. Now you are given a question related to an image and a short "
    "ground-truth answer. Your task is to transform the ground-truth answer into a natural and "
    "convincing response. Make sure the response is accurate, highly relevant to the question, and "
    "consistent with the original answer.\n"
    "\n"
    "Question: Which NASA space probe was launched to this planet in 1989?\n"
    "Answer: Magellan\n"
    "Transformed Answer: NASA sent the Magellan spacecraft to Venus in 1989, which was the first "
    "planetary spacecraft launched from a space shuttle.\n"
    "\n"
    "{context}"
    "Question: {Q}\n"
    "Answer: {A}\n"
    "Transformed Answer:"
)
TEMPLATE_PROMPT_VERSION = "basic-template-v1"

NEGATIONS = frozenset({"no", "not", "never", "none", "nothing", "nobody", "neither", "nor", "cannot"})

_NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30,
    "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100,
}
_CJK = re.compile(r"[\u3400-\u9fff]")


@dataclass(frozen=True)
class RephraseItem:
    question: str
    answer: str  # the target being rewritten (the record's outputs), the prompt's "Answer:"
    lang: str = "en"
    context: str | None = None  # extra prompt line(s), already labelled, e.g. "Caption: a cat on a mat"
    original: str | None = None  # the answer a rewrite must carry (meta.original_answer); None: ``answer``

    @property
    def expected(self) -> str:
        return self.original if self.original and self.original.strip() else self.answer

    @property
    def sources(self) -> str:
        """Everything the LLM was shown about this instance: a rewrite may quote any of it."""
        return "\n".join(t for t in (self.question, self.answer, self.original, self.context) if t)


@dataclass(frozen=True)
class RephraseResult:
    text: str
    status: str  # "rephrased" | "template" | "fallback:<reason>"


def template_sentence(answer: str, lang: str) -> str:
    """The paper's basic template: "The answer is {A}." / "答案是{A}。"."""
    a = answer.strip()
    if lang == "zh":
        return f"答案是{a.rstrip('。.')}。"
    return f"The answer is {a.rstrip('.')}."


def build_prompt(item: RephraseItem) -> str:
    context = f"{item.context.strip()}\n" if item.context and item.context.strip() else ""
    return TABLE10_PROMPT.format(context=context, Q=item.question.strip(), A=item.answer.strip())


def prompt_sha256(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def clean_response(text: str | None) -> str:
    text = (text or "").strip()
    if text.lower().startswith("transformed answer:"):
        text = text[len("transformed answer:"):].strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def _words(text: str) -> list[str]:
    # "isn't" -> "isnt" after normalize_answer; keep the negation visible first.
    return normalize_answer(re.sub(r"n't\b", " not", text.lower())).split()


def _as_number(token: str) -> int | None:
    if token.isdigit():
        return int(token)
    return _NUMBER_WORDS.get(token)


def _contains_answer(text: str, answer: str) -> bool:
    norm_answer = normalize_answer(answer)
    if not norm_answer:
        return False
    if _CJK.search(norm_answer):
        return norm_answer.replace(" ", "") in normalize_answer(text).replace(" ", "")
    words = _words(text)
    if norm_answer == "yes":
        return "yes" in words or not (set(words) & NEGATIONS)
    if norm_answer == "no":
        return bool(set(words) & NEGATIONS)
    number = _as_number(norm_answer)
    if number is not None:
        if any(_as_number(w) == number for w in words):
            return True
        return number == 0 and bool({"no", "none"} & set(words))
    return f" {norm_answer} " in f" {' '.join(words)} " or f" {norm_answer} " in f" {normalize_answer(text)} "


def refusal_evidence(text: str, answer: str, sources: str = "") -> Signal | None:
    """What makes ``text`` a refusal of a question whose original answer is ``answer`` (None: it is none).

    ``sources`` (what the LLM was shown) may be quoted; see ``ying.data.rephrase.refusal``."""
    return _refusal_evidence(text, sources, lambda clause: _contains_answer(clause, answer))


def check_rephrasing(text: str, answer: str, sources: str = "") -> str | None:
    """Why a rewrite is rejected (``empty``, ``refusal``, ``disagrees``), or None when it is kept.

    ``answer`` is the answer the rewrite must carry; ``sources`` the texts it may quote (question,
    answer, context): their own words never count as a refusal."""
    if not text.strip():
        return "empty"
    if refusal_evidence(text, answer, sources) is not None:
        return "refusal"
    if not _contains_answer(text, answer):
        return "disagrees"
    return None


def _join(value: Any, sep: str) -> str:
    if isinstance(value, (list, tuple)):
        return sep.join(str(v).strip() for v in value if str(v).strip())
    return str(value).strip()


def context_from_meta(meta: dict[str, Any], captions: list[str] | None = None) -> str | None:
    """The extra prompt lines the paper adds: COCO captions (VQA v2), rationales (A-OKVQA), OCR tokens.

    ``captions`` are the COCO captions of the record's image, looked up by the stage (see
    ``ying.data.rephrase.stage.load_coco_captions``); captions already in meta win.
    """
    lines = []
    caption = meta.get("caption") or meta.get("captions") or captions
    if caption:
        lines.append(f"Caption: {_join(caption, ' ')}")
    rationale = meta.get("rationale") or meta.get("rationales")
    if rationale:
        lines.append(f"Rationale: {_join(rationale, ' ')}")
    if meta.get("ocr_tokens"):
        lines.append(f"OCR tokens: {_join(meta['ocr_tokens'], ', ')}")
    return "\n".join(lines) or None
