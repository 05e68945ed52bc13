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
"toilet seat" is a toilet, not a chair), "baby/adult <animal>" names only the animal, and a caption
that names a toilet has its "seat"s dropped ("the seat of the toilet" is no chair: the vocabulary's
``drop_when_present``, the reference's ``if 'toilet' in words and 'seat' in words`` rule). Every
mention counts for CHAIR_I, so a hallucinated object named twice counts twice, as in the reference.

Ground truth (``chair_ground_truth``) is, as in the reference, the objects of the image's
segmentation annotations (COCO ``instances_*.json``, required for real COCO) together with those
named in its reference captions; the mini-world's scene file stands in for the annotations.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from ying import storage

__all__ = ["VOCABULARY_DIR", "ObjectVocabulary", "load_vocabulary", "mentioned_objects", "chair_scores",
           "ChairGroundTruth", "chair_ground_truth"]

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
    # phrase -> phrases whose presence in a caption drops it (("seat",) is dropped where ("toilet",) is named)
    drops: dict[tuple[str, ...], frozenset[tuple[str, ...]]] = field(default_factory=dict)

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
    drops = {}
    for phrase, triggers in (doc.get("drop_when_present") or {}).items():
        if phrase.startswith("_"):
            continue
        keys = [_phrase_key(phrase), *(_phrase_key(t) for t in triggers)]
        unknown = [" ".join(k) for k in keys if k not in phrases]
        if unknown:
            raise ValueError(f"{where}: drop_when_present names phrases the vocabulary lacks: {unknown}")
        drops[keys[0]] = frozenset(keys[1:])
    return ObjectVocabulary(name=name, phrases=phrases, max_len=max(len(k) for k in phrases), drops=drops)


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
    found: list[tuple[tuple[str, ...], str | None]] = []  # (the vocabulary phrase matched, its object)
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
            found.append((key, vocab.phrases[key]))
            i += n
            break
        else:
            i += 1
    named = {key for key, _ in found}
    for dropped, triggers in vocab.drops.items():
        if dropped in named and named & triggers:
            found = [(key, obj) for key, obj in found if key != dropped]
    return [obj for _, obj in found if obj]


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


# ---------------------------------------------------------------- ground truth


@dataclass
class ChairGroundTruth:
    """Objects per image id, the vocabulary to read captions with, and where the truth came from."""

    vocabulary: ObjectVocabulary
    objects: dict[str, set[str]]
    sources: list[str]


def _json_items(path: str, prefix: str) -> Iterable[Any]:
    """The items under ``prefix`` of a JSON file, streamed (COCO's instances file is ~0.5 GB)."""
    import ijson

    fs, p = storage.filesystem(path)
    with fs.open(p, "rb") as f:
        yield from ijson.items(f, prefix, use_float=True)


def _json_kvitems(path: str, prefix: str) -> Iterable[tuple[str, Any]]:
    import ijson

    fs, p = storage.filesystem(path)
    with fs.open(p, "rb") as f:
        yield from ijson.kvitems(f, prefix, use_float=True)


def chair_ground_truth(captions: Iterable[tuple[str, str]], vocabulary: str = "auto", source_root: str | None = None,
                       instances: str | list[str] | None = None) -> ChairGroundTruth:
    """Ground-truth objects per image from ``(image id, reference caption)`` pairs, as Rohrbach et al.:
    the objects named in the image's reference captions together with its segmentation annotations.

    For real COCO the annotations are COCO ``instances_*.json`` file(s) (``instances``; the Karpathy
    test images are in val2014), required: without them an object missing from five captions would
    count as hallucinated. For mini-world sources (``source_root`` holds ``_miniworld/scenes.json``)
    the scene file, the shapes actually drawn, is the annotation and the vocabulary is the shapes.
    The files are streamed and only the given images' objects kept.
    """
    scenes_path = storage.join(source_root, "_miniworld", "scenes.json") if source_root else None
    is_miniworld = bool(scenes_path and storage.exists(scenes_path))
    paths = [instances] if isinstance(instances, str) else list(instances or [])
    if not is_miniworld and not paths:
        where = f"{source_root} has no _miniworld/scenes.json" if source_root else "no source root was given"
        raise ValueError(
            f"CHAIR on real COCO ({where}) needs the segmentation annotations as ground truth (Rohrbach et al. "
            "use them with the captions): set eval.chair_instances to COCO's annotations/instances_val2014.json "
            "(the Karpathy test images are val2014; a list also takes instances_train2014.json), or drop "
            "'hallucination' from eval.suites. For mini-world data pass its sources ({'coco': <root>}).")
    if vocabulary == "auto":
        vocabulary = "miniworld" if is_miniworld else "coco"
    vocab = load_vocabulary(vocabulary)
    objects: dict[str, set[str]] = {}
    for image_id, caption in captions:
        objects.setdefault(str(image_id), set()).update(mentioned_objects(caption, vocab))
    sources = ["reference captions"]
    if is_miniworld:
        wanted = {}
        for img in _json_items(storage.join(source_root, "dataset_coco.json"), "images.item"):
            if str(img["cocoid"]) in objects:
                wanted[f"{img['filepath']}/{img['filename']}"] = str(img["cocoid"])
        for key, scene in _json_kvitems(scenes_path, ""):
            if key in wanted:
                objects[wanted[key]].update(s["kind"] for s in scene["shapes"])
        sources.append(f"mini-world scene file {scenes_path}")
    for path in paths:
        if not storage.exists(path):
            raise FileNotFoundError(f"eval.chair_instances: {path} does not exist")
        names = {c["id"]: c["name"] for c in _json_items(path, "categories.item")}
        if not names:
            raise ValueError(f"eval.chair_instances: {path} has no 'categories'; is it a COCO instances_*.json?")
        for a in _json_items(path, "annotations.item"):
            key = str(a.get("image_id"))
            if key in objects and a.get("category_id") in names:
                name = names[a["category_id"]]
                objects[key].update(mentioned_objects(name, vocab) or [name])
        sources.append(f"COCO instances {path}")
    return ChairGroundTruth(vocab, objects, sources)
