"""The eval stage: every model on every built task and on the paper's suites, plus the LLM judge.

Models: the majority-answer baseline, each Ying checkpoint (Stage I, Stage II) and any transformers
VLM named in ``eval.hf_models``. Every built task is scored on its evaluation split (``test`` where
the source has one, else ``validation``): trained tasks on instances never trained on, held-out ones
(Chinese, video) zero-shot with the Chinese dialogue prompt for Chinese. Greedy decoding.
Predictions run on Ray Data model actors and are cached per (model, suite, example).

Writes under ``out_dir``: ``metrics.json`` ({model: {task: {exact_match, rouge_l, n}}}),
``predictions.jsonl`` and ``paper_results.json`` (every number of the paper-table report).
"""

from __future__ import annotations

import json
import random
from typing import Any

from ying import storage
from ying.config import YingConfig
from ying.data.build import read_records
from ying.eval.baselines import MajorityAnswerBaseline
from ying.eval.predictors import ModelSpec, cached_predictions, model_fingerprint
from ying.eval.report import score_predictions, write_metrics
from ying.eval.suites import (
    SUITES,
    Suite,
    SuitePlan,
    build_examples,
    chair_ground_truth,
    make_example,
    record_text,
    score_suite,
)

__all__ = ["evaluation_records", "evaluate_models"]

_TASKS_SUITE = "tasks"  # every built task with its own instruction: metrics.json
_VIDEO_QA_TASKS = ("ivqa", "activitynet-qa", "msrvtt-qa", "msvd-qa")
_KVQA_TASKS = SUITES["kvqa"].tasks


def _eval_split_records(data_dir: str, tasks: list[str]) -> dict[str, list[dict]]:
    by_split = {split: read_records(data_dir, split) for split in ("test", "validation")}
    out: dict[str, list[dict]] = {}
    for task in tasks:
        for split in ("test", "validation"):
            rows = sorted((r for r in by_split[split] if r["task"] == task), key=lambda r: r["id"])
            if rows:
                out[task] = rows
                break
        else:
            print(f"[eval] {task}: no validation or test records; not scored", flush=True)
    return out


def evaluation_records(cfg: YingConfig, data_dir: str) -> list[dict[str, Any]]:
    """Up to ``eval.max_per_task`` records per task from its evaluation split, in id order.

    The evaluation split is ``test`` where the source has one with answers, else ``validation``
    (VQA v2, for one, publishes no test answers).
    """
    by_task = _eval_split_records(data_dir, list(cfg.data.tasks))
    return [r for task in cfg.data.tasks for r in by_task.get(task, [])[: cfg.eval.max_per_task]]


def _baseline_answers(baseline: MajorityAnswerBaseline, examples: list[dict]) -> dict[str, str]:
    return {e["key"]: baseline.predict(e) for e in examples}


def evaluate_models(cfg: YingConfig, data_dir: str, checkpoints: dict[str, str], out_dir: str,
                    sources: dict[str, str] | None = None) -> dict:
    """Score the baseline, each checkpoint and each ``eval.hf_models`` entry on the tasks and suites.

    ``sources`` ({task: source root}) lets CHAIR read the mini-world's scene file or find real COCO.
    Returns {"metrics", "n_records", "models", "suites", "judge"}.
    """
    ecfg = cfg.eval
    unknown = [s for s in ecfg.suites if s not in SUITES]
    if unknown:
        raise ValueError(f"eval.suites names unknown suites {unknown}; known: {sorted(SUITES)}")
    cache_dir = ecfg.cache_dir or storage.join(cfg.run.run_dir, "cache", "eval")
    by_task = _eval_split_records(data_dir, list(cfg.data.tasks))
    train_records = read_records(data_dir, "train")
    trained = [t for t in cfg.data.tasks if t not in set(cfg.data.held_out) | set(cfg.data.eval_only)]

    task_plan = SuitePlan(Suite(_TASKS_SUITE, "", "every built task with its own instruction", tuple(cfg.data.tasks)))
    for task in cfg.data.tasks:
        task_plan.examples.extend(make_example(r, ecfg.max_new_tokens) for r in by_task.get(task, [])[: ecfg.max_per_task])
    plans = {_TASKS_SUITE: task_plan}
    for name in ecfg.suites:
        plans[name] = build_examples(SUITES[name], by_task, max_per_task=ecfg.max_per_task,
                                     max_new_tokens=ecfg.max_new_tokens,
                                     caption_max_new_tokens=ecfg.caption_max_new_tokens,
                                     trained_tasks=trained, train_records=train_records)
        for task, why in plans[name].not_run.items():
            print(f"[eval] suite {name}: {task} not run: {why}", flush=True)

    if ecfg.hf_models and plans.get("video") and plans["video"].examples:
        plans["video"].notes.append(f"{', '.join(ecfg.hf_models)}: single-image models, shown each video's middle frame")
    suite_examples = {name: plan.examples for name, plan in plans.items()}
    answers: dict[str, dict[str, dict[str, str]]] = {}
    baseline = MajorityAnswerBaseline().fit(train_records)
    answers[MajorityAnswerBaseline.name] = {s: _baseline_answers(baseline, exs) for s, exs in suite_examples.items()}
    specs = [ModelSpec(name, "ying", path) for name, path in checkpoints.items()]
    specs += [ModelSpec(name, "hf", path) for name, path in ecfg.hf_models.items()]
    cache_stats = {}
    for spec in specs:
        answers[spec.name], cache_stats[spec.name] = cached_predictions(
            spec, suite_examples, cache_dir, batch_size=ecfg.batch_size, num_actors=ecfg.num_actors,
            max_new_tokens=ecfg.max_new_tokens, fingerprint=model_fingerprint(spec), use_gpu=ecfg.use_gpu)
        print(f"[eval] {spec.name}: {cache_stats[spec.name]}", flush=True)

    # metrics.json: each model on each task with the task's own instruction.
    records = task_plan.examples
    metrics = {}
    for model, per_suite in answers.items():
        preds = {e["record_id"]: per_suite[_TASKS_SUITE].get(e["key"], "") for e in records}
        metrics[model] = score_predictions([{"id": e["record_id"], "task": e["task"], "lang": e["lang"],
                                             "outputs": e["outputs"], "meta": e["meta"]} for e in records], preds)
    write_metrics(out_dir, metrics)

    suites_out: dict[str, dict] = {}
    for name in ecfg.suites:
        plan, suite = plans[name], SUITES[name]
        truth = None
        if name == "hallucination" and plan.examples:
            truth = chair_ground_truth(by_task.get("coco", []), ecfg.chair_vocabulary,
                                       (sources or {}).get("coco"), ecfg.chair_instances)
        rows = {model: score_suite(plan, per_suite[name], truth) for model, per_suite in answers.items()}
        present = {c for row in rows.values() for c in row["scores"]}
        order = list(suite.columns) or [f"{t}{v}" for t in dict.fromkeys(e["task"] for e in plan.examples)
                                        for v in ("", " acc", "/seen", "/unseen")]
        suites_out[name] = {
            "paper": suite.paper, "title": suite.title,
            "status": "ok" if plan.examples else "not run: " + "; ".join(plan.not_run.values()),
            "not_run": plan.not_run, "notes": plan.notes, "rows": rows,
            "columns": [c for c in order if c in present],
            "n_examples": len(plan.examples),
            **({"chair": {"vocabulary": truth.vocabulary.name, "ground_truth": truth.sources}} if truth else {}),
        }

    judge_out = _run_judge(cfg, plans, answers, checkpoints, cache_dir)

    lines = []
    for e in records:
        row = {"id": e["record_id"], "task": e["task"], "split": e["split"], "inputs": e["inputs"],
               "reference": e["outputs"]}
        row.update({m: answers[m][_TASKS_SUITE].get(e["key"], "") for m in answers})
        lines.append(json.dumps(row, ensure_ascii=False))
    storage.write_bytes_atomic(storage.join(out_dir, "predictions.jsonl"), ("\n".join(lines) + "\n").encode())
    results = {"metrics": metrics, "n_records": len(records), "models": list(answers), "suites": suites_out,
               "judge": judge_out, "prediction_cache": {"dir": cache_dir, **cache_stats}}
    storage.write_json_atomic(storage.join(out_dir, "paper_results.json"), results)
    return results


def _run_judge(cfg: YingConfig, plans: dict, answers: dict, checkpoints: dict[str, str], cache_dir: str) -> dict:
    from ying.eval.judge import JudgeClient, judge_pairwise, judge_settings, judge_video_accuracy

    jcfg = cfg.eval.judge
    if not jcfg.base_url:
        return {"status": "not configured"}
    client = JudgeClient.from_config(jcfg, cache_dir)
    ours = list(checkpoints)[-1] if checkpoints else None
    # "Ours" in Figure 4 is the last Ying checkpoint (Stage II in the DAG); every other model is a baseline.
    out: dict[str, Any] = {"status": "ok", "settings": judge_settings(jcfg), "ours": ours, "pairwise": {},
                           "video_accuracy": {}}
    base_examples = plans[_TASKS_SUITE].examples
    kvqa = [e for e in base_examples if e["task"] in _KVQA_TASKS]
    # Figure 4: a fixed random subset of the KVQA tasks, the same for every baseline.
    kvqa = random.Random(cfg.run.seed).sample(kvqa, min(jcfg.max_examples, len(kvqa)))
    if ours and kvqa:
        for baseline in answers:
            if baseline in (ours, "majority-answer"):
                continue
            items = [{"id": e["record_id"], "question": record_text(e), "reference": e["outputs"],
                      "ours": answers[ours][_TASKS_SUITE][e["key"]],
                      "baseline": answers[baseline][_TASKS_SUITE][e["key"]]} for e in kvqa]
            out["pairwise"][baseline] = judge_pairwise(client, items, jcfg.samples)
    else:
        out["pairwise_not_run"] = f"no {', '.join(_KVQA_TASKS)} data" if not kvqa else "no Ying checkpoint"
    for task in _VIDEO_QA_TASKS:
        exs = [e for e in base_examples if e["task"] == task][: jcfg.video_max_examples]
        if not exs:
            continue
        for model in answers:
            if model == "majority-answer":
                continue
            items = [{"question": record_text(e), "reference": json.loads(e["meta"]).get("original_answer", e["outputs"]),
                      "prediction": answers[model][_TASKS_SUITE][e["key"]]} for e in exs]
            out["video_accuracy"].setdefault(model, {})[task] = judge_video_accuracy(client, items)
    return out
