"""The paper's evaluation suites, one per result, as examples to answer and a scorer for the answers.

| suite | paper | tasks | metric |
|---|---|---|---|
| kvqa | Table 4 | okvqa, a-okvqa, viquae | ROUGE-L |
| hallucination | Table 5 | coco (one caption per image, "Provide a brief description of the given image") | Len, CHAIR_I, CHAIR_S |
| chinese | Tables 6, 12 | flickr8k-cn, fm-iqa, chinese-food (zero-shot, Chinese dialogue prompt) | ROUGE-L (chars), option accuracy |
| video | Table 7 | msrvtt, ivqa, activitynet-qa, msrvtt-qa, msvd-qa (8 frames) | ROUGE-L |
| generation_classification | Table 11 | visual-dialog, imagenet | ROUGE-L, option accuracy |
| unseen_instructions | Figure 5 | every Stage II task | ROUGE-L with seen vs held-back instructions |

A suite builds examples from evaluation records (``build_examples``) and scores a model's answers
(``score_suite``). Tasks that were not built are reported as "not run: no <task> data"; a suite
with none of its tasks reports only that. Nothing here knows Ray or the model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ying import storage
from ying.eval.chair import ObjectVocabulary, chair_scores, load_vocabulary, mentioned_objects
from ying.eval.metrics import option_accuracy, rouge_l
from ying.eval.predictors import example_key

__all__ = ["SUITES", "Suite", "HALLUCINATION_INSTRUCTION", "build_examples", "score_suite", "ChairGroundTruth",
           "chair_ground_truth", "seen_and_unseen_instructions",
           "SuitePlan", "make_example", "record_text"]

HALLUCINATION_INSTRUCTION = "Provide a brief description of the given image"  # paper Table 5


@dataclass(frozen=True)
class Suite:
    name: str
    paper: str  # where the paper reports it
    title: str
    tasks: tuple[str, ...]  # empty: decided by the run (unseen_instructions: the Stage II tasks)
    columns: tuple[str, ...] = ()  # metric columns, in table order


SUITES: dict[str, Suite] = {s.name: s for s in [
    Suite("kvqa", "Table 4", "ROUGE-L on knowledge VQA", ("okvqa", "a-okvqa", "viquae")),
    Suite("hallucination", "Table 5", f'Object hallucination with the instruction "{HALLUCINATION_INSTRUCTION}"',
          ("coco",), ("len", "chair_i", "chair_s", "avg")),
    Suite("chinese", "Table 6", "Zero-shot Chinese tasks with the Chinese dialogue prompt (Table 12)",
          ("flickr8k-cn", "fm-iqa", "chinese-food")),
    Suite("video", "Table 7", "ROUGE-L on video-language tasks (8 frames per video)",
          ("msrvtt", "ivqa", "activitynet-qa", "msrvtt-qa", "msvd-qa")),
    Suite("generation_classification", "Table 11", "ROUGE-L on Visual Dialog, accuracy on ImageNet",
          ("visual-dialog", "imagenet")),
    Suite("unseen_instructions", "Figure 5", "ROUGE-L with training (seen) vs held-back (unseen) instructions", ()),
]}

# Classification tasks score option accuracy (Table 11's ImageNet, Table 6's ChineseFoodNet); the rest ROUGE-L.
_ACCURACY_TASKS = {"imagenet", "chinese-food"}


def _stable_pick(options: list[str], *parts: str) -> str:
    digest = hashlib.sha256("\x00".join(parts).encode("utf-8")).digest()
    return options[int.from_bytes(digest[:8], "big") % len(options)]


def make_example(rec: Mapping[str, Any], max_new_tokens: int, instruction: str | None = None,
             inputs: str | None = None, variant: str = "") -> dict:
    e = {
        "record_id": rec["id"],
        "task": rec["task"],
        "split": rec.get("split", ""),
        "lang": rec.get("lang", "en"),
        "variant": variant,
        "images": rec["images"],
        "instruction": rec["instruction"] if instruction is None else instruction,
        "inputs": rec["inputs"] if inputs is None else inputs,
        "outputs": rec["outputs"],
        "meta": rec.get("meta") or "{}",
        # Zero-shot Chinese gets the Chinese dialogue context (Appendix F, Table 12); English does not.
        "chinese_dialogue": rec.get("lang") == "zh",
        "max_new_tokens": max_new_tokens,
    }
    e["key"] = example_key(e)
    return e


def seen_and_unseen_instructions(task: str, train_records: Iterable[Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    """The task's pool split by whether any training record used the instruction."""
    from ying.data.instructions import load_pool

    pool = load_pool(task)
    used = {r["instruction"] for r in train_records if r["task"] == task}
    return [p for p in pool if p in used], [p for p in pool if p not in used]


@dataclass
class SuitePlan:
    suite: Suite
    examples: list[dict] = field(default_factory=list)
    not_run: dict[str, str] = field(default_factory=dict)  # task -> reason
    notes: list[str] = field(default_factory=list)


def build_examples(suite: Suite, eval_records: Mapping[str, list[dict]], *, max_per_task: int, max_new_tokens: int,
                   caption_max_new_tokens: int, trained_tasks: Iterable[str] = (),
                   train_records: Iterable[Mapping[str, Any]] = ()) -> SuitePlan:
    """What ``suite`` asks each model, from ``eval_records`` ({task: records of its evaluation split})."""
    plan = SuitePlan(suite)
    if suite.name == "unseen_instructions":
        train_records = list(train_records)
        tasks = sorted(trained_tasks)
        if not tasks:
            plan.not_run["*"] = "no Stage II tasks"
        for task in tasks:
            recs = eval_records.get(task, [])[:max_per_task]
            if not recs:
                plan.not_run[task] = f"no {task} data"
                continue
            seen, unseen = seen_and_unseen_instructions(task, train_records)
            if not seen or not unseen:
                plan.not_run[task] = (f"training used all {len(seen)} instructions of the {task} pool; set the "
                                      "data build to train on 4 of each pool (paper Figure 5) to hold 6 back")
                continue
            plan.notes.append(f"{task}: {len(seen)} seen, {len(unseen)} unseen instructions")
            for rec in recs:
                # Each record is asked once with a seen and once with an unseen instruction, picked stably.
                plan.examples.append(make_example(rec, max_new_tokens, _stable_pick(seen, "seen", rec["id"]), variant="seen"))
                plan.examples.append(make_example(rec, max_new_tokens, _stable_pick(unseen, "unseen", rec["id"]),
                                              variant="unseen"))
        return plan
    for task in suite.tasks:
        recs = eval_records.get(task, [])
        if not recs:
            plan.not_run[task] = f"no {task} data"
            continue
        if suite.name == "hallucination":
            by_image: dict[str, dict] = {}
            for rec in recs:  # one caption per image (Rohrbach et al.; Li et al. 2023b)
                by_image.setdefault(_image_id(rec), rec)
            for rec in list(by_image.values())[:max_per_task]:
                plan.examples.append(make_example(rec, caption_max_new_tokens, HALLUCINATION_INSTRUCTION, ""))
        else:
            plan.examples.extend(make_example(rec, max_new_tokens) for rec in recs[:max_per_task])
        if suite.name == "video":
            frames = sorted({json.loads(r.get("meta") or "{}").get("frames") for r in recs[:max_per_task]} - {None})
            plan.notes.append(f"{task}: frames per video {frames or 'unknown'}")
    return plan


def _image_id(rec: Mapping[str, Any]) -> str:
    meta = json.loads(rec.get("meta") or "{}")
    return str(meta.get("cocoid", meta.get("image_id", hashlib.sha256(rec["images"][0]).hexdigest())))


@dataclass
class ChairGroundTruth:
    """Objects per image id, the vocabulary to read captions with, and where the truth came from."""

    vocabulary: ObjectVocabulary
    objects: dict[str, set[str]]
    sources: list[str]


def chair_ground_truth(coco_records: list[dict], vocabulary: str = "auto", source_root: str | None = None,
                       instances_path: str | None = None) -> ChairGroundTruth:
    """Ground-truth objects per image, as Rohrbach et al.: the objects named in the image's reference
    captions, joined by the segmentation annotations (COCO ``instances_*.json``) when given. For
    mini-world sources the scene file (``_miniworld/scenes.json``, the shapes actually drawn) is the
    annotation, and the vocabulary is the mini-world's shapes.
    """
    scenes_path = storage.join(source_root, "_miniworld", "scenes.json") if source_root else None
    is_miniworld = bool(scenes_path and storage.exists(scenes_path))
    if vocabulary == "auto":
        vocabulary = "miniworld" if is_miniworld else "coco"
    vocab = load_vocabulary(vocabulary)
    objects: dict[str, set[str]] = {}
    for rec in coco_records:
        objects.setdefault(_image_id(rec), set()).update(mentioned_objects(rec["outputs"], vocab))
    sources = ["reference captions"]
    if is_miniworld:
        scenes = storage.read_json(scenes_path)
        ann = storage.read_json(storage.join(source_root, "dataset_coco.json"))
        for img in ann.get("images", []):
            scene = scenes.get(f"{img['filepath']}/{img['filename']}")
            if scene and str(img["cocoid"]) in objects:
                objects[str(img["cocoid"])].update(s["kind"] for s in scene["shapes"])
        sources.append(f"mini-world scene file {scenes_path}")
    if instances_path:
        inst = storage.read_json(instances_path)
        names = {c["id"]: c["name"] for c in inst.get("categories", [])}
        for a in inst.get("annotations", []):
            key = str(a.get("image_id"))
            if key in objects and a.get("category_id") in names:
                objects[key].update(mentioned_objects(names[a["category_id"]], vocab) or [names[a["category_id"]]])
        sources.append(f"COCO instances {instances_path}")
    return ChairGroundTruth(vocab, objects, sources)


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def score_suite(plan: SuitePlan, answers: Mapping[str, str], chair_truth: ChairGroundTruth | None = None) -> dict:
    """``{column: value}`` for one model: fractions in [0, 1] (Len in words), with ``n`` per column."""
    suite = plan.suite
    scores: dict[str, float | None] = {}
    counts: dict[str, int] = {}
    if suite.name == "hallucination":
        if not plan.examples:
            return {"scores": {}, "n": {}}
        if chair_truth is None:
            raise ValueError("the hallucination suite needs CHAIR ground truth")
        pairs = [(answers.get(e["key"], ""), chair_truth.objects.get(_image_id(e), set())) for e in plan.examples]
        c = chair_scores(pairs, chair_truth.vocabulary)
        scores = {"len": c["avg_len"], "chair_i": c["chair_i"], "chair_s": c["chair_s"],
                  "avg": (c["chair_i"] + c["chair_s"]) / 2}
        counts = {k: c["n_captions"] for k in scores}
        return {"scores": scores, "n": counts, "mentions": c["n_mentions"], "hallucinated": c["n_hallucinated"]}
    per: dict[str, list[float]] = {}
    for e in plan.examples:
        answer = answers.get(e["key"], "")
        if suite.name == "unseen_instructions":
            column = f"{e['task']}/{e['variant']}"
        else:
            column = e["task"]
        if e["task"] in _ACCURACY_TASKS:
            acc = option_accuracy(answer, e["outputs"], e["inputs"])
            per.setdefault(f"{column} acc", []).append(acc if acc is not None else 0.0)
        per.setdefault(column, []).append(rouge_l(answer, e["outputs"], e["lang"]))
    for column, xs in per.items():
        scores[column] = _mean(xs)
        counts[column] = len(xs)
    return {"scores": scores, "n": counts}


def record_text(e: Mapping[str, Any]) -> str:
    """The question as a judge reads it: instruction and inputs."""
    return f"{e['instruction']}\n{e['inputs']}".strip()

