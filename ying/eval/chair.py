"""CHAIR_I and CHAIR_S (Rohrbach et al. 2018; the paper's Appendix H): object hallucination in captions.

    CHAIR_I = |hallucinated object mentions| / |object mentions|
    CHAIR_S = |captions with a hallucinated object| / |captions|

An object vocabulary is shipped as data (``ying/eval/data/*_objects.json``): canonical objects with
the words and phrases that name them. ``coco_objects.json`` holds the 80 COCO segmentation objects
with the synonym list of Lu et al. 2018, as CHAIR uses; ``miniworld_objects.json`` holds the
mini-world's shapes so the metric runs on the embedded default.

Matching follows Rohrbach et al.'s reference code: lowercase words, plurals reduced to singular
(``inflect``, which carries its own rules: nothing to download, unlike nltk's WordNet), multi-word
phrases matched before single words ("hot dog" is food, not a dog; "teddy bear" is not a bear;
"toilet seat" is not a chair), and "baby/adult <animal>" names only the animal. Every mention
counts for CHAIR_I, so a hallucinated object named twice counts twice, as in the reference code.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

__all__ = ["VOCABULARY_DIR", "ObjectVocabulary", "load_vocabulary", "mentioned_objects", "chair_scores"]

VOCABULARY_DIR = Path(__file__).parent / "data"
_WORD = re.compile(r"[a-z]+")


@functools.lru_cache(maxsize=1)
def _inflect_engine():
    import inflect

    return inflect.engine()


@functools.lru_cache(maxsize=65536)
def _singular(word: str) -> str:
    single = _inflect_engine().singular_noun(word)
    return single if isinstance(single, str) and single else word


@dataclass(frozen=True)
class ObjectVocabulary:
    name: str
    phrases: dict[tuple[str, ...], str | None]  # word tuple -> canonical object (None: a phrase naming no object)
    max_len: int

    @property
    def objects(self) -> list[str]:
        return sorted({o for o in self.phrases.values() if o})


def _phrase_key(phrase: str) -> tuple[str, ...]:
    return tuple(_WORD.findall(phrase.lower()))


def vocabulary_from_dict(doc: Mapping, where: str = "<dict>") -> ObjectVocabulary:
    try:
        objects = doc["objects"]
        name = doc.get("name", where)
    except (KeyError, TypeError) as e:
        raise ValueError(f"{where}: an object vocabulary needs an 'objects' mapping ({e})") from None
    phrases: dict[tuple[str, ...], str | None] = {}
    for canonical, words in objects.items():
        for phrase in [canonical, *words]:
            key = _phrase_key(phrase)
            if not key:
                raise ValueError(f"{where}: object {canonical!r} has an empty synonym {phrase!r}")
            if key in phrases and phrases[key] != canonical:
                raise ValueError(f"{where}: {phrase!r} names both {phrases[key]!r} and {canonical!r}")
            phrases[key] = canonical
    for phrase, canonical in (doc.get("compounds") or {}).items():
        if phrase.startswith("_"):
            continue
        if canonical is not None and canonical not in objects:
            raise ValueError(f"{where}: compound {phrase!r} names unknown object {canonical!r}")
        phrases[_phrase_key(phrase)] = canonical
    prefixes = doc.get("animal_prefixes") or {}
    for animal in prefixes.get("animals", []):
        for prefix in prefixes.get("prefixes", []):
            phrases[_phrase_key(f"{prefix} {animal}")] = animal if animal in objects else None
    return ObjectVocabulary(name=name, phrases=phrases, max_len=max(len(k) for k in phrases))


@functools.lru_cache(maxsize=16)
def load_vocabulary(name_or_path: str) -> ObjectVocabulary:
    """A shipped vocabulary by name (``coco``, ``miniworld``) or any JSON file of the same shape."""
    path = VOCABULARY_DIR / f"{name_or_path}_objects.json"
    if not path.exists():
        path = Path(name_or_path)
    if not path.exists():
        shipped = sorted(p.name.removesuffix("_objects.json") for p in VOCABULARY_DIR.glob("*_objects.json"))
        raise FileNotFoundError(f"object vocabulary {name_or_path!r}: no such file; shipped ones: {shipped}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    return vocabulary_from_dict(doc, str(path))


def mentioned_objects(caption: str, vocab: ObjectVocabulary) -> list[str]:
    """Canonical objects named in ``caption``, one entry per mention, longest phrase first."""
    words = _WORD.findall((caption or "").lower())
    found: list[str] = []
    i = 0
    while i < len(words):
        for n in range(min(vocab.max_len, len(words) - i), 0, -1):
            raw = tuple(words[i : i + n])
            # The word as written first ("bus", "people", "scissors"), then its singular ("buses").
            for key in (raw, raw[:-1] + (_singular(raw[-1]),), tuple(_singular(w) for w in raw)):
                if key in vocab.phrases:
                    break
            else:
                continue
            if vocab.phrases[key]:
                found.append(vocab.phrases[key])
            i += n
            break
        else:
            i += 1
    return found


def chair_scores(captions: Iterable[tuple[str, Iterable[str]]], vocab: ObjectVocabulary) -> dict:
    """CHAIR over ``(caption, ground-truth objects)`` pairs; ground truth in canonical or synonym words.

    Returns ``chair_i``, ``chair_s`` (fractions), ``n_captions``, ``n_mentions``, ``n_hallucinated``
    and ``avg_len`` (words per caption, the paper's Table 5 "Len").
    """
    n_captions = n_mentions = n_hallucinated = n_bad_captions = n_words = 0
    for caption, truth in captions:
        truth_set = {o for t in truth for o in (mentioned_objects(t, vocab) or [t])}
        mentions = mentioned_objects(caption, vocab)
        bad = [m for m in mentions if m not in truth_set]
        n_captions += 1
        n_words += len((caption or "").split())
        n_mentions += len(mentions)
        n_hallucinated += len(bad)
        n_bad_captions += bool(bad)
    return {
        "chair_i": n_hallucinated / n_mentions if n_mentions else 0.0,
        "chair_s": n_bad_captions / n_captions if n_captions else 0.0,
        "n_captions": n_captions,
        "n_mentions": n_mentions,
        "n_hallucinated": n_hallucinated,
        "avg_len": n_words / n_captions if n_captions else 0.0,
    }
