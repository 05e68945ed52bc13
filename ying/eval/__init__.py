"""Evaluation: metrics (ROUGE-L en/zh, exact match, option accuracy, CHAIR), the paper's suites,
the LLM judge, one model interface for our checkpoints and HF VLMs, baselines and the report.

Entry points for evaluating checkpoints (``ying.eval.evaluate``; imported on first use):

- ``evaluate_models(cfg, data_dir, checkpoints, out_dir, sources=None)``: the eval stage (every
  model on every task and suite, the judge, ``metrics.json`` and ``paper_results.json``).
- ``evaluate_checkpoint(cfg, data_dir, checkpoint, suites=None, tasks=None, limit=None, name=...,
  kind="ying", sources=None, cache_dir=None)``: one model on some tasks (each with its own
  instruction) and suites, at most ``limit`` records per task; returns ``{"model", "tasks": {task:
  {exact_match, rouge_l, n}}, "suites": {suite: {"scores", "n", "status", "not_run", "notes"}},
  "n_examples", "prediction_cache"}``. Figure 5's seen/unseen ROUGE-L is
  ``suites["unseen_instructions"]["scores"]["<task>/unseen"]``.
- ``plan_evaluation(cfg, data_dir, suites=None, tasks=None, limit=None, sources=None)`` -> ``EvalPlan``
  and ``score_plan(plan, answers)``: the same in two halves, for callers that get answers another
  way (e.g. over HTTP): ``plan.suite_examples()`` gives ``{suite: [example]}`` (text, ``key``,
  ``image_ref``), ``ying.eval.records.read_images([e["image_ref"], ...])`` their image bytes, and
  ``score_plan(plan, {suite: {example key: answer}})`` the scores.

Memory stays bounded whatever the data's size: ``ying.eval.records`` reads only the columns and
rows each step needs, a Parquet row group at a time.
"""

from ying.eval.baselines import MajorityAnswerBaseline
from ying.eval.chair import chair_scores, load_vocabulary, mentioned_objects
from ying.eval.metrics import (
    ROUGE_TOKENIZERS,
    exact_match,
    normalize_answer,
    option_accuracy,
    parse_choice,
    parse_options,
    rouge_l,
)
from ying.eval.report import render_paper_tables, render_report, score_predictions, write_metrics

_FROM_EVALUATE = ("evaluate_models", "evaluate_checkpoint", "plan_evaluation", "score_plan", "EvalPlan")

__all__ = [
    "ROUGE_TOKENIZERS",
    "rouge_l",
    "normalize_answer",
    "exact_match",
    "parse_options",
    "parse_choice",
    "option_accuracy",
    "chair_scores",
    "load_vocabulary",
    "mentioned_objects",
    "MajorityAnswerBaseline",
    "score_predictions",
    "write_metrics",
    "render_report",
    "render_paper_tables",
    *_FROM_EVALUATE,
]


def __getattr__(name: str):
    # The stage's entry points pull in Ray-facing modules; metrics users (the rephrase stage) need not.
    if name in _FROM_EVALUATE:
        from ying.eval import evaluate

        return getattr(evaluate, name)
    raise AttributeError(f"module 'ying.eval' has no attribute {name!r}")
