"""The eval stage: every model on every built task and on the paper's suites, plus the LLM judge.

Models: the majority-answer baseline, each Ying checkpoint (Stage I, Stage II) and any transformers
VLM named in ``eval.hf_models``. Every built task is scored on its evaluation split (``test`` where
the source has one, else ``validation``): trained tasks on instances never trained on, held-out ones
(Chinese, video) zero-shot with the Chinese dialogue prompt for Chinese. Greedy decoding.
Predictions run on Ray Data model actors (or, with ``eval.num_actors: 1``, in one Ray task per model)
and are cached per (model, suite, example).

Memory stays bounded whatever the data's size (``ying.eval.records``): the training split is read a
row group at a time for the majority answer and Figure 5's instructions; the evaluation splits'
ids first, then the text of just the selected rows; images only where the model answers.

Public entry points, for the stage and for callers that evaluate checkpoints themselves (Tune
ablations, a Serve client):

- ``plan_evaluation(cfg, data_dir, suites=, tasks=, limit=)`` -> ``EvalPlan``: the examples every
  model is asked (text, image digests and ``image_ref``; no image bytes) and how they are scored.
- ``predict_plan(cfg, spec, plan.suite_examples(), cache_dir)``: one model's answers from the
  ``eval.*`` model actors (GPU and dtype per ``eval.use_gpu``), through the prediction cache.
- ``score_plan(plan, answers)``: one model's scores from its answers ``{suite: {example key: text}}``;
  ``suite_table(plan, suite, {model: row})`` a paper table of them.
- ``evaluate_checkpoint(cfg, data_dir, checkpoint, suites=, tasks=, limit=)``: the two around one
  model's cached predictions; returns its scores.
- ``evaluate_models(cfg, data_dir, checkpoints, out_dir, sources=)``: the whole stage.

Writes under ``out_dir``: ``metrics.json`` ({model: {task: {exact_match, rouge_l, n}}}),
``predictions.jsonl`` and ``paper_results.json`` (every number of the paper-table report).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ying import storage
from ying.config import YingConfig
from ying.eval.baselines import MajorityAnswerBaseline
from ying.eval.chair import ChairGroundTruth
from ying.eval.predictors import ModelSpec, cached_predictions, describe_hf_model, model_fingerprint
from ying.eval.records import select_evaluation_records, training_summary
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

__all__ = ["TASKS_SUITE", "EvalPlan", "plan_evaluation", "score_plan", "predict_plan", "suite_table",
           "eval_cache_dir", "evaluate_checkpoint", "evaluation_records", "evaluate_models"]

TASKS_SUITE = "tasks"  # every task with its own instruction: metrics.json
_VIDEO_QA_TASKS = ("ivqa", "activitynet-qa", "msrvtt-qa", "msvd-qa")
_KVQA_TASKS = SUITES["kvqa"].tasks


@dataclass
class EvalPlan:
    """What every model is asked and how it is scored.

    ``suites`` maps ``"tasks"`` (each task with its own instruction) and each paper suite to its
    ``SuitePlan``; examples carry text, ``image_digests`` and an ``image_ref``
    (``ying.eval.records.read_images`` reads the bytes), never image bytes.
    """

    suites: dict[str, SuitePlan]
    chair_truth: ChairGroundTruth | None = None
    not_scored: dict[str, str] = field(default_factory=dict)  # task -> why no example asks it

    def suite_examples(self) -> dict[str, list[dict]]:
        return {name: plan.examples for name, plan in self.suites.items()}

    @property
    def n_examples(self) -> int:
        return sum(len(p.examples) for p in self.suites.values())


def _check_suites(suites: Iterable[str]) -> list[str]:
    suites = list(suites)
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        raise ValueError(f"eval.suites names unknown suites {unknown}; known: {sorted(SUITES)}")
    return suites


def plan_evaluation(cfg: YingConfig, data_dir: str, *, suites: Iterable[str] | None = None,
                    tasks: Iterable[str] | None = None, limit: int | None = None,
                    sources: Mapping[str, str] | None = None,
                    train_instructions: Mapping[str, Iterable[str]] | None = None) -> EvalPlan:
    """The examples of ``tasks`` (default: every built task, each with its own instruction) and of
    ``suites`` (default ``eval.suites``), at most ``limit`` (default ``eval.max_per_task``) records
    per task, from ``data_dir``'s evaluation splits.

    ``sources`` ({task: source root}) lets CHAIR find the mini-world's scene file. Figure 5's
    suite reads the instructions training used from the train split unless ``train_instructions``
    ({task: instructions}) gives them.
    """
    ecfg = cfg.eval
    suites = _check_suites(ecfg.suites if suites is None else suites)
    tasks = list(cfg.data.tasks if tasks is None else tasks)
    limit = ecfg.max_per_task if limit is None else limit
    built = set(cfg.data.tasks)
    trained = [t for t in cfg.data.tasks if t not in set(cfg.data.held_out) | set(cfg.data.eval_only)]
    needed = list(tasks)
    for name in suites:
        needed += [t for t in SUITES[name].tasks if t in built]
        if name == "unseen_instructions":
            needed += trained
    needed = list(dict.fromkeys(needed))
    per_image = [t for t in SUITES["hallucination"].tasks if t in built] if "hallucination" in suites else []
    selection = select_evaluation_records(data_dir, needed, limit, per_image)

    plan = EvalPlan({})
    task_plan = SuitePlan(Suite(TASKS_SUITE, "", "every task with its own instruction", tuple(tasks)))
    for task in tasks:
        records = selection.records.get(task, [])
        if not records:
            plan.not_scored[task] = "no validation or test records"
            print(f"[eval] {task}: no validation or test records; not scored", flush=True)
        task_plan.examples.extend(make_example(r, ecfg.max_new_tokens) for r in records)
    plan.suites[TASKS_SUITE] = task_plan
    if "unseen_instructions" in suites and train_instructions is None:
        train_instructions = training_summary(data_dir).instructions
    for name in suites:
        records = {**selection.records, **selection.by_image} if name == "hallucination" else selection.records
        plan.suites[name] = build_examples(SUITES[name], records, max_per_task=limit,
                                           max_new_tokens=ecfg.max_new_tokens,
                                           caption_max_new_tokens=ecfg.caption_max_new_tokens,
                                           trained_tasks=trained, train_instructions=train_instructions or {})
        for task, why in plan.suites[name].not_run.items():
            print(f"[eval] suite {name}: {task} not run: {why}", flush=True)
    if "hallucination" in suites and plan.suites["hallucination"].examples:
        coco = SUITES["hallucination"].tasks[0]
        plan.chair_truth = chair_ground_truth(selection.by_image.get(coco, []), ecfg.chair_vocabulary,
                                              (sources or {}).get(coco), ecfg.chair_instances)
    return plan


def score_plan(plan: EvalPlan, answers: Mapping[str, Mapping[str, str]]) -> dict:
    """One model's scores from its answers ``{suite: {example key: answer}}``:
    ``{"tasks": {task: {exact_match, rouge_l, n}}, "suites": {suite: {"scores", "n", ...}}}``
    (a missing answer scores 0)."""
    records = plan.suites[TASKS_SUITE].examples
    given = answers.get(TASKS_SUITE, {})
    preds = {e["record_id"]: given.get(e["key"], "") for e in records}
    tasks = score_predictions([{"id": e["record_id"], "task": e["task"], "lang": e["lang"],
                                "outputs": e["outputs"], "meta": e["meta"]} for e in records], preds)
    suites = {name: score_suite(p, answers.get(name, {}), plan.chair_truth if name == "hallucination" else None)
              for name, p in plan.suites.items() if name != TASKS_SUITE}
    return {"tasks": tasks, "suites": suites}


def _suite_status(plan: SuitePlan) -> str:
    return "ok" if plan.examples else "not run: " + "; ".join(plan.not_run.values())


def eval_cache_dir(cfg: YingConfig) -> str:
    """Where predictions (and judge responses) are cached: ``eval.cache_dir``, else ``<run_dir>/cache/eval``."""
    return cfg.eval.cache_dir or storage.join(cfg.run.run_dir, "cache", "eval")


def predict_plan(cfg: YingConfig, spec: ModelSpec, suite_examples: Mapping[str, list[dict]], cache_dir: str, *,
                 fingerprint: str | None = None, in_process: bool = False) -> tuple[dict[str, dict[str, str]], dict[str, int]]:
    """One model's answers to a plan's examples ``{suite: [example]}`` with ``cfg.eval``'s actors:
    ``eval.num_actors`` model actors (1: one Ray task), each on a GPU in the model's dtype when ``eval.use_gpu``
    (``ying.eval.predictors``), answers cached under ``cache_dir``. Returns (answers, cache counts).
    The eval stage, ``evaluate_checkpoint``, the ablations and Serve's evaluations all answer here.
    ``in_process``: the model answers in this process instead (a Tune trial that trained here)."""
    ecfg = cfg.eval
    # A suite without examples opens no cache file (a suite's file holds every answer ever cached for it).
    answers, stats = cached_predictions(spec, {s: exs for s, exs in suite_examples.items() if exs}, cache_dir,
                                        batch_size=ecfg.batch_size, num_actors=ecfg.num_actors,
                                        max_new_tokens=ecfg.max_new_tokens, fingerprint=fingerprint,
                                        use_gpu=ecfg.use_gpu, progress_interval_s=ecfg.progress_interval_s,
                                        in_process=in_process)
    return {s: answers.get(s, {}) for s in suite_examples}, stats


def suite_table(plan: EvalPlan, name: str, rows: Mapping[str, dict]) -> dict:
    """Suite ``name``'s report table (``ying.eval.report.render_suite_table``) from each model's
    ``score_plan(...)["suites"][name]`` row ``{model: row}``."""
    suite_plan, suite = plan.suites[name], SUITES[name]
    truth = plan.chair_truth if name == "hallucination" else None
    present = {c for row in rows.values() for c in row["scores"]}
    order = list(suite.columns) or [f"{t}{v}" for t in dict.fromkeys(e["task"] for e in suite_plan.examples)
                                    for v in ("", " acc", "/seen", "/unseen")]
    return {
        "paper": suite.paper, "title": suite.title, "status": _suite_status(suite_plan),
        "not_run": suite_plan.not_run, "notes": suite_plan.notes, "rows": dict(rows),
        "columns": [c for c in order if c in present],
        "n_examples": len(suite_plan.examples),
        **({"chair": {"vocabulary": truth.vocabulary.name, "ground_truth": truth.sources}} if truth else {}),
    }


def evaluate_checkpoint(cfg: YingConfig, data_dir: str, checkpoint: str, *, suites: Iterable[str] | None = None,
                        tasks: Iterable[str] | None = None, limit: int | None = None, name: str = "ying",
                        kind: str = "ying", sources: Mapping[str, str] | None = None,
                        cache_dir: str | None = None) -> dict:
    """Score one model (a Ying checkpoint, or with ``kind="hf"`` a transformers model directory) on
    ``tasks`` with their own instructions and on ``suites``, at most ``limit`` records per task.

    E.g. a Tune ablation: ``evaluate_checkpoint(cfg, data_dir, ckpt, suites=["unseen_instructions"],
    tasks=cfg.data.held_out, limit=50)``. Predictions run on Ray Data actors, or one Ray task with
    one actor's worth (``eval.num_actors``, ``eval.use_gpu``), and are cached under ``cache_dir`` (default ``eval.cache_dir``, else
    ``<run_dir>/cache/eval``). Returns ``{"model", "tasks": {task: {exact_match, rouge_l, n}},
    "suites": {suite: {"scores", "n", "status", "not_run", "notes"}}, "n_examples", "prediction_cache"}``.
    """
    plan = plan_evaluation(cfg, data_dir, suites=suites, tasks=tasks, limit=limit, sources=sources)
    spec = ModelSpec(name, kind, checkpoint)  # type: ignore[arg-type]
    answers, stats = predict_plan(cfg, spec, plan.suite_examples(), cache_dir or eval_cache_dir(cfg))
    scores = score_plan(plan, answers)
    suites_out = {s: {**row, "status": _suite_status(plan.suites[s]), "not_run": plan.suites[s].not_run,
                      "notes": plan.suites[s].notes} for s, row in scores["suites"].items()}
    return {"model": name, "tasks": scores["tasks"], "suites": suites_out, "n_examples": plan.n_examples,
            "prediction_cache": stats}


def evaluation_records(cfg: YingConfig, data_dir: str) -> list[dict[str, Any]]:
    """Up to ``eval.max_per_task`` records per task from its evaluation split, in id order: text
    columns, ``image_digests`` and ``image_ref`` (``ying.eval.records.read_images`` reads the images).

    The evaluation split is ``test`` where the source has one with answers, else ``validation``
    (VQA v2, for one, publishes no test answers).
    """
    selection = select_evaluation_records(data_dir, cfg.data.tasks, cfg.eval.max_per_task)
    return [r for task in cfg.data.tasks for r in selection.records.get(task, [])]


def _hf_notes(hf_models: Mapping[str, str]) -> dict[str, dict[str, str]]:
    return {name: describe_hf_model(path) for name, path in hf_models.items()}


def evaluate_models(cfg: YingConfig, data_dir: str, checkpoints: dict[str, str], out_dir: str,
                    sources: dict[str, str] | None = None, ours: str | None = None) -> dict:
    """Score the baseline, each checkpoint and each ``eval.hf_models`` entry on the tasks and suites.

    ``sources`` ({task: source root}) lets CHAIR read the mini-world's scene file. ``ours``: the
    checkpoint the LLM judge compares every other model with (default: the last one).
    Returns {"metrics", "n_records", "models", "suites", "judge", "prediction_cache", "hf_models"}.
    """
    ecfg = cfg.eval
    _check_suites(ecfg.suites)
    cache_dir = eval_cache_dir(cfg)
    summary = training_summary(data_dir)  # the majority answers and Figure 5's instructions, streamed
    plan = plan_evaluation(cfg, data_dir, sources=sources, train_instructions=summary.instructions)
    hf_models = _hf_notes(ecfg.hf_models)
    video = plan.suites.get("video")
    if video is not None and video.examples:
        for name, d in hf_models.items():
            frames = ("the middle frame of each video (a single-image model)" if d["frames"] == "middle_frame"
                      else "every sampled frame of each video")
            video.notes.append(f"{name}: {frames}")
    suite_examples = plan.suite_examples()

    answers: dict[str, dict[str, dict[str, str]]] = {}
    baseline = MajorityAnswerBaseline.from_answers(summary.majority, summary.global_majority)
    answers[MajorityAnswerBaseline.name] = {s: {e["key"]: baseline.predict(e) for e in exs}
                                            for s, exs in suite_examples.items()}
    specs = [ModelSpec(name, "ying", path) for name, path in checkpoints.items()]
    specs += [ModelSpec(name, "hf", path) for name, path in ecfg.hf_models.items()]
    cache_stats = {}
    for spec in specs:
        answers[spec.name], cache_stats[spec.name] = predict_plan(cfg, spec, suite_examples, cache_dir,
                                                                  fingerprint=model_fingerprint(spec))
        print(f"[eval] {spec.name}: {cache_stats[spec.name]}", flush=True)

    scores = {model: score_plan(plan, per_suite) for model, per_suite in answers.items()}
    metrics = {model: s["tasks"] for model, s in scores.items()}  # each model on each task, its own instruction
    write_metrics(out_dir, metrics)

    suites_out = {name: suite_table(plan, name, {model: s["suites"][name] for model, s in scores.items()})
                  for name in ecfg.suites}

    judge_out = _run_judge(cfg, plan.suites, answers, ours or (list(checkpoints)[-1] if checkpoints else None),
                           cache_dir)

    records = plan.suites[TASKS_SUITE].examples
    lines = []
    for e in records:
        row = {"id": e["record_id"], "task": e["task"], "split": e["split"], "inputs": e["inputs"],
               "reference": e["outputs"]}
        row.update({m: answers[m][TASKS_SUITE].get(e["key"], "") for m in answers})
        lines.append(json.dumps(row, ensure_ascii=False))
    storage.write_bytes_atomic(storage.join(out_dir, "predictions.jsonl"), ("\n".join(lines) + "\n").encode())
    results = {"metrics": metrics, "n_records": len(records), "models": list(answers), "suites": suites_out,
               "judge": judge_out, "prediction_cache": {"dir": cache_dir, **cache_stats}, "hf_models": hf_models}
    storage.write_json_atomic(storage.join(out_dir, "paper_results.json"), results)
    return results


def _run_judge(cfg: YingConfig, plans: dict, answers: dict, ours: str | None, cache_dir: str) -> dict:
    from ying.eval.judge import JudgeClient, judge_pairwise, judge_settings, judge_video_accuracy

    jcfg = cfg.eval.judge
    if not jcfg.base_url:
        return {"status": "not configured"}
    client = JudgeClient.from_config(jcfg, cache_dir)
    # "Ours" in Figure 4 is Stage II in the DAG; every other model (variants included) is a baseline.
    out: dict[str, Any] = {"status": "ok", "settings": judge_settings(jcfg), "ours": ours, "pairwise": {},
                           "video_accuracy": {}}
    base_examples = plans[TASKS_SUITE].examples
    kvqa = [e for e in base_examples if e["task"] in _KVQA_TASKS]
    # Figure 4: a fixed random subset of the KVQA tasks, the same for every baseline.
    kvqa = random.Random(cfg.run.seed).sample(kvqa, min(jcfg.max_examples, len(kvqa)))
    if ours and kvqa:
        for baseline in answers:
            if baseline in (ours, "majority-answer"):
                continue
            items = [{"id": e["record_id"], "question": record_text(e), "reference": e["outputs"],
                      "ours": answers[ours][TASKS_SUITE][e["key"]],
                      "baseline": answers[baseline][TASKS_SUITE][e["key"]]} for e in kvqa]
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
                      "prediction": answers[model][TASKS_SUITE][e["key"]]} for e in exs]
            out["video_accuracy"].setdefault(model, {})[task] = judge_video_accuracy(client, items)
    return out
