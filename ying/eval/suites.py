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

from ying.eval import chair
from ying.eval.chair import ChairGroundTruth, chair_scores
from ying.eval.metrics import option_accuracy, rouge_l
from ying.eval.predictors import example_key
from ying.eval.records import image_key

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
    """One question for the models. ``rec`` carries its ``images``, or (read by ``ying.eval.records``)
    their ``image_digests`` and an ``image_ref`` that the prediction actors read the images from."""
    meta = rec.get("meta") or "{}"
    e = {
        "record_id": rec["id"],
        "task": rec["task"],
        "split": rec.get("split", ""),
        "lang": rec.get("lang", "en"),
        "variant": variant,
        "instruction": rec["instruction"] if instruction is None else instruction,
        "inputs": rec["inputs"] if inputs is None else inputs,
        "outputs": rec["outputs"],
        "meta": meta,
        # Zero-shot Chinese gets the Chinese dialogue context (Appendix F, Table 12); English does not.
        "chinese_dialogue": rec.get("lang") == "zh",
        "max_new_tokens": max_new_tokens,
        # A video's images are its sampled frames: video-taking HF models get them all.
        "video": rec.get("category") == "video" or "frames" in json.loads(meta),
    }
    if "images" in rec:
        e["images"] = rec["images"]
    else:
        e["image_digests"], e["image_ref"] = rec["image_digests"], rec["image_ref"]
    e["key"] = example_key(e)
    return e


def seen_and_unseen_instructions(task: str, train_records: Iterable[Mapping[str, Any]] = (),
                                 used: Iterable[str] | None = None) -> tuple[list[str], list[str]]:
    """The task's pool split by whether training used the instruction: ``used`` (the instructions of
    the task's training records, e.g. from ``ying.eval.records.training_summary``), else read from
    ``train_records``."""
    from ying.data.instructions import load_pool

    pool = load_pool(task)
    used = set(used) if used is not None else {r["instruction"] for r in train_records if r["task"] == task}
    return [p for p in pool if p in used], [p for p in pool if p not in used]


@dataclass
class SuitePlan:
    suite: Suite
    examples: list[dict] = field(default_factory=list)
    not_run: dict[str, str] = field(default_factory=dict)  # task -> reason
    notes: list[str] = field(default_factory=list)


def build_examples(suite: Suite, eval_records: Mapping[str, list[dict]], *, max_per_task: int, max_new_tokens: int,
                   caption_max_new_tokens: int, trained_tasks: Iterable[str] = (),
                   train_records: Iterable[Mapping[str, Any]] = (),
                   train_instructions: Mapping[str, Iterable[str]] | None = None) -> SuitePlan:
    """What ``suite`` asks each model, from ``eval_records`` ({task: records of its evaluation split,
    in id order}). Figure 5 needs the instructions training used: ``train_instructions``
    ({task: instructions}), else read from ``train_records``."""
    plan = SuitePlan(suite)
    if suite.name == "unseen_instructions":
        train_records = list(train_records) if train_instructions is None else []
        tasks = sorted(trained_tasks)
        if not tasks:
            plan.not_run["*"] = "no Stage II tasks"
        for task in tasks:
            recs = eval_records.get(task, [])[:max_per_task]
            if not recs:
                plan.not_run[task] = f"no {task} data"
                continue
            seen, unseen = seen_and_unseen_instructions(
                task, train_records, None if train_instructions is None else train_instructions.get(task, ()))
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
    digests = rec.get("image_digests")
    if digests is None and rec.get("images"):
        digests = [hashlib.sha256(rec["images"][0]).hexdigest()]
    return image_key(rec.get("meta"), (digests or [None])[0])


def chair_ground_truth(coco_records: Iterable[Mapping[str, Any]], vocabulary: str = "auto",
                       source_root: str | None = None, instances_path: str | list[str] | None = None) -> ChairGroundTruth:
    """``ying.eval.chair.chair_ground_truth`` over the reference captions of ``coco_records``
    (every caption of each image asked about), keyed by image id as the hallucination suite is."""
    return chair.chair_ground_truth(((_image_id(r), r["outputs"]) for r in coco_records), vocabulary,
                                    source_root, instances_path)


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

