"""Evaluation: metrics (ROUGE-L en/zh, exact match), baselines and the report."""

from ying.eval.baselines import MajorityAnswerBaseline
from ying.eval.metrics import ROUGE_TOKENIZERS, exact_match, normalize_answer, rouge_l
from ying.eval.report import render_report, score_predictions, write_metrics

__all__ = [
    "ROUGE_TOKENIZERS",
    "rouge_l",
    "normalize_answer",
    "exact_match",
    "MajorityAnswerBaseline",
    "score_predictions",
    "write_metrics",
    "render_report",
]
