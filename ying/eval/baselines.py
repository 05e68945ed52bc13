"""Trivial reference points for the eval report: what a model scores by ignoring the image."""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Mapping

__all__ = ["MajorityAnswerBaseline"]


def _most_common(counts: Counter) -> str:
    # Highest count wins; ties go to the alphabetically first text, so the result is order-free.
    return min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]


class MajorityAnswerBaseline:
    """Predicts the most common training ``outputs`` of a record's task (global majority for unseen tasks)."""

    name = "majority-answer"

    def __init__(self) -> None:
        self.by_task: dict[str, str] = {}
        self.global_answer: str = ""

    def fit(self, records: Iterable[Mapping[str, Any]]) -> "MajorityAnswerBaseline":
        per_task: dict[str, Counter] = {}
        overall: Counter = Counter()
        for rec in records:
            per_task.setdefault(rec["task"], Counter())[rec["outputs"]] += 1
            overall[rec["outputs"]] += 1
        if not overall:
            raise ValueError("MajorityAnswerBaseline.fit: no training records given")
        self.by_task = {task: _most_common(c) for task, c in per_task.items()}
        self.global_answer = _most_common(overall)
        return self

    @classmethod
    def from_answers(cls, by_task: Mapping[str, str], global_answer: str) -> "MajorityAnswerBaseline":
        """A baseline from majority answers already counted (``ying.eval.records.training_summary``
        counts them over a whole split in bounded memory, with the same tie rule as ``fit``)."""
        baseline = cls()
        baseline.by_task, baseline.global_answer = dict(by_task), global_answer
        return baseline

    def predict(self, record: Mapping[str, Any]) -> str:
        return self.by_task.get(record["task"], self.global_answer)

    def predict_many(self, records: Iterable[Mapping[str, Any]]) -> dict[str, str]:
        """Predictions keyed by record id, the shape ``score_predictions`` takes."""
        return {rec["id"]: self.predict(rec) for rec in records}
