"""Is an LLM rewrite a refusal? Judged by what the rewrite does, not by the words it uses.

A rewrite is a refusal when it disclaims or deflects instead of answering: the assistant says it cannot
see, know, tell or determine something, that there is not enough information, that it is not sure;
or it apologises and drops the original answer. "No, the dog is unable to jump." and "The sign reads
\u201cSorry, we're closed\u201d." are answers, not refusals, although they hold the words an old
phrase list matched.

No NLI or classifier model can be downloaded where this runs, and the rewrites are short single-turn
sentences whose refusals come in a small number of shapes, so the detector is a set of clause-level
patterns (see ``tests/fixtures/refusals/rewrites.jsonl`` for the labelled corpus it is measured on,
``benchmarks/bench_refusals.py`` for its precision and recall). It finds *signals* in the rewrite:

- strong: the assistant's own inability or ignorance about the question ("I cannot determine", "I'm
  not sure", "I don't know", "I can't identify", "it is hard to say", "cannot be determined", "there
  is no way to know", "not enough information", "unanswerable", "I'm unable to provide"), the
  assistant saying it is an AI or cannot see the image ("as an AI", "I can't see images", "without
  seeing the image"), and the assistant saying where its answer came from instead of looking
  ("image description", "based on the caption provided"). Any one of these makes the rewrite a
  refusal, even when an answer follows: the answer is then a guess the LLM has told us it cannot back,
  or a sentence that tells the user the picture was never looked at; the template is the better
  training target. Only the assistant's ability counts: "the dog is unable to jump" and "she cannot
  see the screen" are about the picture.
- weak: an apology ("I'm sorry", "Sorry,", "Unfortunately", "I apologise", "I'm afraid"), or the
  answer said to be hidden ("can't see the plate clearly", "is not visible", "illegible", "not
  mentioned", "unknown"). These make a refusal only when the rewrite does not assert the original
  answer in some clause that holds no signal and no hedge ("might", "maybe", "possibly", "I think").
  So "Sorry to say, the sign reads STOP." is kept (a turn of phrase beside a full answer), and
  "Sorry, the sign is unreadable, but it might say closed." is a refusal (the answer only as a guess).

What the rewrite may quote never counts: text inside quotation marks, and any signal whose words the
sources hold (the question, the answer, OCR tokens, captions: a T-shirt that reads "I'm not sure").
When the question asks about the very thing a signal denies ("Can you see the mountains?" - "No, the
mountains cannot be seen for the fog"), the signal is the answer: a weak one is dropped and a strong
one weakened, so the rewrite stands when it asserts the answer elsewhere.

English is what the paper rephrases; Chinese gets a short list of its usual refusal markers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

__all__ = ["Signal", "refusal_signals", "refusal_evidence"]

# -- verbs of knowing (strong when the assistant cannot) and of perceiving (weak: "I can't see the plate
# clearly" may sit beside an answer; whether it does decides) -------------------------------------------
_KNOW = (
    r"determine|tell|know|say|identify|confirm|verify|answer|judge|infer|ascertain|establish|deduce|"
    r"predict|recogni[sz]e|specify|assess|conclude|guess|speculate|comment|provide|help(?!\s+but\b)|assist|respond|"
    r"give|offer|figure|work out|decide|distinguish|count|be sure|be certain|be definitive|accurately|"
    r"make (?:a |an |any )?(?:judgment|judgement|determination|assessment|guess|call)"
)
_SEE = r"see|view|spot|find|notice|read|make out|decipher|discern|perceive|locate|hear|zoom"
_KNOWN = (
    r"determined|known|told|said|identified|confirmed|verified|answered|judged|inferred|ascertained|"
    r"established|deduced|predicted|recogni[sz]ed|specified|assessed|concluded|counted|discerned|"
    r"distinguished|figured out|worked out|answerable|determinable|stated with certainty"
)
_SEEN = r"seen|viewed|spotted|read|made out|deciphered|perceived|located|noticed|found"
_ADV = r"(?:(?:really|simply|honestly|actually|accurately|reliably|definitively|definitely|confidently|exactly|" \
       r"precisely|clearly|fully|truly|easily|properly|possibly|currently|quite|even|just)\s+)*"
_CANT = (
    r"(?:cannot|can\s+not|can't|could\s+not|couldn't|am\s+unable\s+to|'m\s+unable\s+to|are\s+unable\s+to|"
    r"'re\s+unable\s+to|am\s+not\s+able\s+to|'m\s+not\s+able\s+to|are\s+not\s+able\s+to|'re\s+not\s+able\s+to|"
    r"was\s+unable\s+to|was\s+not\s+able\s+to|won't\s+be\s+able\s+to|will\s+not\s+be\s+able\s+to|"
    r"wouldn't\s+be\s+able\s+to|would\s+not\s+be\s+able\s+to|have\s+no\s+way\s+to|have\s+no\s+way\s+of|"
    r"am\s+not\s+in\s+a\s+position\s+to|'m\s+not\s+in\s+a\s+position\s+to|lack\s+the\s+ability\s+to|"
    r"don't\s+have\s+the\s+ability\s+to|do\s+not\s+have\s+the\s+ability\s+to)"
)
# the assistant, then its verb: "i cannot", "i'm unable to" (no space before a contraction);
# "you"/"one" only in the impersonal forms below
_ME = r"(?:i|we)(?:\s+|(?='))"
_IMAGE = (r"(?:the\s+|this\s+|that\s+|your\s+|any\s+|an\s+|a\s+)?(?:actual\s+)?"
          r"(?:image|picture|photo|photograph|visual|visuals|video)s?")
_WH = r"(?:whether|if|what|which|who|whom|whose|how|where|when|why)"
_INFO = r"(?:visual\s+)?(?:information|info|details?|context|evidence|data|clues?|cues?)"
_HARD = r"(?:impossible|not\s+possible|difficult|hard|tough|tricky|challenging|not\s+easy)"

# (pattern, strength, kind); a named group ``key`` holds the word a question may ask about.
_EN_PATTERNS: list[tuple[str, str, str]] = [
    # the assistant is an AI / cannot see the picture / answers from text it was given
    (r"\bas\s+an?\s+(?:ai|artificial\s+intelligence|(?:large\s+)?language\s+model|text-based\s+\w+|"
     r"ai\s+(?:language\s+)?model|ai\s+assistant|virtual\s+assistant|machine)\b", "strong", "ai"),
    (r"\b(?:i\s+am|i'm)\s+(?:just\s+|only\s+|merely\s+)?an?\s+(?:ai|(?:large\s+)?language\s+model|text-based|"
     r"artificial\s+intelligence)\b", "strong", "ai"),
    (rf"\b{_ME}(?:{_CANT}|do\s+not|don't|did\s+not|didn't)\s+{_ADV}(?P<key>see|view|access|look\s+at|"
     rf"process|analy[sz]e|perceive|interpret|open|receive|display)\s+{_IMAGE}\b", "strong", "blind"),
    (rf"\b{_ME}(?:do\s+not|don't)\s+have\s+(?:any\s+)?(?:access\s+to\s+{_IMAGE}|(?:the\s+)?(?:ability|capability)\s+"
     rf"to\s+(?:see|view)|visual\s+(?:access|capabilities|input)|eyes|vision)\b", "strong", "blind"),
    (rf"\bwithout\s+(?:seeing|viewing|access\s+to|looking\s+at|having\s+seen)\s+{_IMAGE}\b", "strong", "blind"),
    (r"\b(?:image|picture|photo)\s+(?P<key>description)s?\b", "strong", "blind"),
    (r"\b(?:the\s+)?(?:provided|given)\s+(?P<key>caption|description|context|text|rationale|ocr\s+tokens?)s?\b",
     "strong", "blind"),
    (r"\b(?P<key>caption|description|context|rationale|ocr\s+tokens?|information|details?)s?\s+"
     r"(?:provided|given|i\s+was\s+given|you\s+provided|supplied)\b", "strong", "blind"),
    (r"\b(?:according\s+to|based\s+on|judging\s+(?:by|from))\s+the\s+(?P<key>caption|description|rationale|"
     r"ocr\s+tokens?)s?\b", "strong", "blind"),
    (r"\bthe\s+(?P<key>caption|description|rationale)s?\s+(?:only\s+)?(?:says|mentions|states|describes|"
     r"does\s+not|doesn't|did\s+not|didn't|only|lacks?|omits?|makes\s+no)\b", "strong", "blind"),
    # the assistant cannot know / tell / determine (strong), cannot see / read (weak)
    (rf"\b{_ME}{_CANT}\s+{_ADV}(?P<key>{_KNOW})\b", "strong", "inability"),
    (rf"\b{_ME}{_CANT}\s+{_ADV}(?P<key>{_SEE})\b", "weak", "hidden"),
    (rf"\b{_ME}(?:cannot|can\s+not|can't|could\s+not|couldn't)\s+{_ADV}(?:be\s+)?(?P<key>sure|certain|"
     rf"definitive|positive)\b", "strong", "unsure"),
    (rf"\b(?:you|one)\s+{_CANT}\s+{_ADV}(?P<key>determine|tell|know|say|identify|confirm|be\s+sure|be\s+certain)\b",
     "strong", "inability"),
    (rf"\b(?:(?:not\s+)?(?:something|anything)\s+{_ME}can|nothing\s+{_ME}can)\s+{_ADV}(?P<key>{_KNOW}|{_SEE})\b",
     "strong", "inability"),
    (rf"\b(?:i\s+am|i'm|we\s+are|we're)\s+{_ADV}(?:not\s+{_ADV}(?P<key>sure|certain|positive|confident)|"
     rf"(?P<key2>unsure|uncertain))\b", "strong", "unsure"),
    (r"\b(?:i|we)\s+(?:do\s+not|don't|did\s+not|didn't|cannot|can't|can\s+not)\s+(?:really\s+|actually\s+)?"
     r"(?P<key>know)\b", "strong", "unsure"),
    (r"\b(?:i|we)\s+(?:have|had)\s+no\s+(?:idea|clue|way)\b", "strong", "unsure"),
    (rf"\b(?:there\s+is|there's|there\s+are)\s+no\s+(?:way|means)\s+(?:for\s+me\s+|for\s+us\s+)?(?:to|of)\s+"
     rf"(?P<key>\w+)", "strong", "inability"),
    (r"\bno\s+way\s+(?:to|of)\s+(?P<key>knowing|know|telling|tell|determining|determine|saying|say|"
     r"confirming|confirm|being\s+sure)\b", "strong", "inability"),
    # impersonal: it cannot be determined, it is hard to say, unclear whether
    (rf"\b(?:cannot|can\s+not|can't|could\s+not|couldn't)\s+be\s+{_ADV}(?P<key>{_KNOWN})\b", "strong", "inability"),
    (rf"\b(?:cannot|can\s+not|can't|could\s+not|couldn't)\s+be\s+{_ADV}(?P<key>{_SEEN})\b", "weak", "hidden"),
    (rf"\b{_HARD}\s+(?:for\s+(?:me|us|anyone|one)\s+)?to\s+{_ADV}(?P<key>{_KNOW})\b", "strong", "inability"),
    (rf"\b{_HARD}\s+(?:for\s+(?:me|us|anyone|one)\s+)?to\s+{_ADV}(?P<key>{_SEE})\b", "weak", "hidden"),
    (rf"\b(?:too\s+\w+|not\s+\w+\s+enough|\w+\s+enough)\s+(?:for\s+(?:me|us)\s+)?to\s+{_ADV}(?P<key>{_KNOW})\b",
     "strong", "inability"),
    (rf"\bfor\s+(?:me|us)\s+to\s+{_ADV}(?P<key>{_KNOW}|{_SEE})\b", "strong", "inability"),
    (rf"\b(?:it\s+is|it's|it\s+was|that\s+is|that's|this\s+is|remains)\s+{_ADV}(?:unclear|uncertain|not\s+clear|"
     rf"unknown|not\s+known|not\s+evident|not\s+obvious|ambiguous|debatable|hard\s+to\s+say|"
     rf"difficult\s+to\s+say)\b", "strong", "unsure"),
    (rf"\b(?:unclear|uncertain|not\s+clear)\s+{_WH}\b", "strong", "unsure"),
    (rf"\b(?:hard|difficult|impossible)\s+to\s+say\b", "strong", "unsure"),
    (rf"\bcan't\s+say\s+for\s+(?:sure|certain)|cannot\s+say\s+for\s+(?:sure|certain)\b", "strong", "unsure"),
    (rf"(?:\bnot|n't)\s+(?:enough|sufficient)\s+{_INFO}\b", "strong", "no_info"),
    (rf"\b(?:insufficient|limited|lack\s+of|lacks|lacking|missing)\s+{_INFO}\b", "strong", "no_info"),
    (rf"\bno\s+(?:further\s+|additional\s+|more\s+|specific\s+)?{_INFO}\s+(?:about|on|regarding|as\s+to|to)\b",
     "strong", "no_info"),
    (rf"\bwithout\s+(?:more|further|additional|any)\s+{_INFO}\b", "strong", "no_info"),
    (rf"\b(?:do\s+not|don't|does\s+not|doesn't|did\s+not|didn't)\s+have\s+(?:enough|sufficient|any|the|much)\s+"
     rf"(?:\w+\s+)?{_INFO}\b", "strong", "no_info"),
    (rf"\b(?:does\s+not|doesn't|did\s+not|didn't|do\s+not|don't)\s+(?:provide|give|offer|contain|include)\s+"
     rf"(?:enough|sufficient|any|much|the)?\s*{_INFO}\b", "strong", "no_info"),
    (rf"\b(?:image|picture|photo|photograph)\s+(?:alone\s+)?(?:does\s+not|doesn't|did\s+not|didn't)\s+"
     rf"(?:clearly\s+)?(?:show|reveal|indicate|make\s+clear|tell|say|specify|provide)\s+{_WH}\b", "strong", "no_info"),
    (r"\b(?:not\s+answerable|unanswerable|not\s+determinable|indeterminable)\b", "strong", "inability"),
    (rf"\bno\s+telling\s+{_WH}\b", "strong", "unsure"),
    (r"\b(?:doesn't|does\s+not|don't|do\s+not|didn't|did\s+not)\s+make\s+(?:it\s+)?(?:clear|obvious|evident)\b",
     "strong", "no_info"),
    # asking the user for the picture or for more about it instead of answering
    (r"\b(?:would|will|'d|'ll)\s+need\s+(?:to\s+(?:see|view|look\s+at|have|know)|more|additional|further|a\s+closer|"
     r"a\s+better|a\s+clearer)\b", "strong", "deflect"),
    (r"\b(?:could|can|would|will)\s+you\s+(?:please\s+)?(?:provide|share|give|send|upload|attach|describe|clarify|"
     r"tell\s+me\s+more)\b|\bplease\s+(?:provide|share|upload|attach|send|describe)\b", "strong", "deflect"),
    # deflection to what would be needed, or to the limits of the image or the assistant
    (r"\b(?:would|will|might|may)\s+(?:require|need)\s+(?:a\s+|an\s+)?(?:closer|better|clearer|more|further|"
     r"additional|higher|different|another|much)\b", "strong", "deflect"),
    (r"\bbeyond\s+(?:what\s+(?:can|could)\s+be\s+\w+|what\s+(?:i|we)\s+can|the\s+scope|my\s+(?:ability|abilities|"
     r"capabilit\w+|knowledge))", "strong", "deflect"),
    # the answer said to be hidden (weak: the rewrite may still assert it elsewhere)
    (r"\b(?:is|are|was|were)\s+(?:(?:clearly|fully|really|entirely|simply|completely)\s+)?"
     r"(?P<key>illegible|unreadable|indiscernible|obscured|unknown|unclear)\b", "weak", "hidden"),
    (r"\b(?:isn't|aren't|wasn't|weren't|(?:is|are|was|were)\s+not)\s+(?:(?:clearly|fully|really|entirely|"
     r"explicitly|readily|easily)\s+)?(?P<key>visible|legible|readable|discernible|clear|mentioned|specified|"
     r"stated|provided|given|indicated|shown|possible|feasible)\b", "weak", "hidden"),
    (r"\b(?P<key>illegible|unreadable|indiscernible|unidentifiable|undeterminable)\b", "weak", "hidden"),
    (rf"\b(?:can't|cannot)\s+{_ADV}(?P<key>{_SEE})\b", "weak", "hidden"),
    # apologies
    (r"\b(?:i\s+am|i'm|we\s+are|we're)\s+(?:so\s+|very\s+|truly\s+|really\s+|terribly\s+)?sorry\b", "weak", "apology"),
    (r"(?:^|[.!?;:,]\s*)(?:so\s+|very\s+|really\s+)?sorry\b", "weak", "apology"),
    (r"\b(?:i\s+)?apologi[sz]e\b|\b(?:my\s+)?apologies\b", "weak", "apology"),
    (r"\b(?:unfortunately|regrettably|sadly|alas)\b", "weak", "apology"),
    (r"\b(?:i\s+am|i'm)\s+afraid\b(?!\s+(?:not|so)\b)", "weak", "apology"),  # "I'm afraid not" answers "no"
]
_ZH_PATTERNS: list[tuple[str, str, str]] = [
    (r"作为(?:一个|一名)?(?:AI|ai|人工智能|语言模型|AI语言模型|人工智能助手)", "strong", "ai"),
    (r"(?:我|我们)(?:无法|不能|没法|没办法|看不到|看不见|不确定|不知道|不清楚)", "strong", "inability"),
    (r"无法(?:确定|判断|回答|识别|得知|知道|看到|看清|辨认|辨别|分辨)", "strong", "inability"),
    (r"(?:信息|细节|上下文)(?:不足|不够|有限)|没有足够的(?:信息|细节)", "strong", "no_info"),
    (r"看不清|不清楚", "weak", "hidden"),
    (r"抱歉|对不起|很遗憾|不好意思", "weak", "apology"),
]

# compiled once: the stage checks every rewrite of every row
_EN = [(re.compile(p), strength, kind) for p, strength, kind in _EN_PATTERNS]
_ZH = [(re.compile(p), strength, kind) for p, strength, kind in _ZH_PATTERNS]

_HEDGE = re.compile(
    r"\b(?:might|may|maybe|perhaps|possibly|probably|presumably|likely|could\s+be|could\s+have|could\s+possibly|"
    r"i\s+think|i\s+believe|i\s+guess|i\s+suppose|i\s+would\s+guess|my\s+(?:best\s+)?guess|if\s+i\s+had\s+to\s+guess|"
    r"it\s+is\s+possible\s+that|it's\s+possible\s+that|or\s+so|seems\s+likely)\b|可能|也许|大概|或许"
)
_CLAUSE_BREAK = re.compile(r"[.!?;:,\u3002\uff0c\uff01\uff1f\uff1b\uff1a\u2026()\n]+"
                           r"|\s(?:but|however|although|though|whereas|yet)\s")
_CJK = re.compile(r"[\u3400-\u9fff]")
_SOURCE_LABEL = re.compile(r"(?im)^\s*(?:caption|captions|rationale|rationales|ocr\s+tokens)\s*:")

# Words that name the same thing a question may ask about ("readable" / "cannot be read").
_FAMILIES = {
    "see": ("see", "seen", "saw", "visible", "visibility", "invisible", "view", "viewed", "spot", "spotted",
            "notice", "noticed", "look", "looking", "make out", "made out", "discern", "discerned", "discernible"),
    "read": ("read", "readable", "unreadable", "legible", "illegible", "legibly", "decipher", "deciphered",
             "make out", "made out"),
    "tell": ("tell", "told", "telling"),
    "know": ("know", "known", "knowing", "unknown", "knowable"),
    "determine": ("determine", "determined", "determining", "determinable"),
    "identify": ("identify", "identified", "identifiable", "unidentifiable"),
    "say": ("say", "said", "saying", "says"),
    "count": ("count", "counted", "counting", "countable"),
    "sure": ("sure", "certain", "unsure", "uncertain", "positive", "confident"),
    "clear": ("clear", "unclear", "clearly"),
    "mention": ("mention", "mentioned", "specified", "specify", "stated", "state"),
    "possible": ("possible", "impossible", "able", "unable"),
    "caption": ("caption", "captions"),
    "description": ("description", "describe", "described"),
    "rationale": ("rationale", "rationales"),
}
_FAMILY_OF = {w: fam for fam, words in _FAMILIES.items() for w in words}


@dataclass(frozen=True)
class Signal:
    strength: str  # "strong" | "weak"
    kind: str  # ai, blind, inability, unsure, no_info, hidden, apology
    start: int
    end: int
    text: str


def _normalise(text: str) -> str:
    """Lowercased, curly apostrophes straight, quoted spans blanked out (same length: offsets hold)."""
    # per character, so offsets into the lowered text are offsets into ``text`` ("\u0130" lowers to two)
    t = "".join(c.lower() if len(c.lower()) == 1 else c for c in text)
    t = re.sub(r"\u201c[^\u201d]*\u201d|\u2018[^\u2019]*\u2019(?!\w)|\u300c[^\u300d]*\u300d"
               r"|\u201e[^\u201c\u201d]*[\u201c\u201d]", lambda m: " " * len(m.group()), t)
    t = t.replace("\u2019", "'").replace("\u2018", "'")
    t = re.sub(r'"[^"]*"', lambda m: " " * len(m.group()), t)
    # a single-quoted span opens after a non-word character and closes before one
    # ("it's" is no quote; 'I don't know' is one quote holding an apostrophe)
    t = re.sub(r"(?<![\w'])'(?:[^'\n]|(?<=\w)'(?=\w)){2,}?'(?!\w)", lambda m: " " * len(m.group()), t)
    return t


def _plain(text: str) -> str:
    return " " + re.sub(r"[^\w']+", " ", text.lower().replace("\u2019", "'")).strip() + " "


def _families(text: str) -> set[str]:
    plain = _plain(text)
    found = {_FAMILY_OF[w] for w in plain.split() if w in _FAMILY_OF}
    found.update(_FAMILY_OF[p] for p in ("make out", "made out") if f" {p} " in plain)
    return found


def _key_families(match: re.Match) -> set[str]:
    keys = [v for k, v in match.groupdict().items() if k.startswith("key") and v]
    fams = set()
    for key in keys or [match.group()]:
        fams |= _families(key)
    return fams


def refusal_signals(text: str, sources: str = "") -> list[Signal]:
    """The disclaimers, apologies and hidden-answer claims in ``text`` that ``sources`` do not account for.

    A signal is dropped when its words are the sources' own (quoting the sign), and it is weakened
    (strong) or dropped (weak) when the question asks about the very thing it denies."""
    said = _normalise(text)
    shown_text = _SOURCE_LABEL.sub(" ", sources)
    shown = _plain(shown_text)
    asked = _families(shown_text)
    patterns = (_ZH if _CJK.search(text) else []) + _EN
    signals: list[Signal] = []
    for pattern, strength, kind in patterns:
        for m in pattern.finditer(said):
            words = m.group().strip(" .,;:!?")
            cjk = bool(_CJK.search(words))
            if (words in shown_text) if cjk else (_plain(words) in shown):
                continue  # the sign, the shirt, the question said it
            level = strength
            if _key_families(m) & asked:
                if level == "weak":
                    continue  # "Is the plate readable?" - "No, it cannot be read."
                level = "weak"
            signals.append(Signal(level, kind, m.start(), m.end(), words))
    return sorted(signals, key=lambda s: (s.start, s.end))


def _clauses(text: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for m in _CLAUSE_BREAK.finditer(text):
        if m.start() > start:
            spans.append((start, m.start()))
        start = m.end()
    if start < len(text):
        spans.append((start, len(text)))
    return spans


def refusal_evidence(text: str, sources: str, carries_answer: Callable[[str], bool]) -> Signal | None:
    """The signal that makes ``text`` a refusal, or None when it is not one.

    ``carries_answer(clause)`` says whether a clause asserts the original answer (the acceptance
    check's own answer matching: yes/no, numbers, words)."""
    signals = refusal_signals(text, sources)
    if not signals:
        return None
    strong = next((s for s in signals if s.strength == "strong"), None)
    if strong is not None:
        return strong
    said = _normalise(text)
    for start, end in _clauses(said):
        if any(s.start < end and start < s.end for s in signals):
            continue  # the apology or the "not visible" clause asserts nothing
        clause = text[start:end]
        if _HEDGE.search(said[start:end]) or not clause.strip():
            continue  # a guess is no answer
        if carries_answer(clause):
            return None
    return signals[0]
