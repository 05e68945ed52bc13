"""Evaluation: metrics (ROUGE-L en/zh, exact match, option accuracy, CHAIR), the paper's suites,
the LLM judge, one model interface for our checkpoints and HF VLMs, baselines and the report."""

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
]
