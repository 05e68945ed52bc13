"""Per-task scores, ``metrics.json`` and the Markdown report.

Scores are stored as fractions in [0, 1]; the report prints them x100, as the paper's tables do.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping, Sequence

from ying import storage
from ying.eval.metrics import ROUGE_TOKENIZERS, exact_match, rouge_l

__all__ = ["METRIC_NAMES", "score_predictions", "write_metrics", "render_report"]

METRIC_NAMES = ("exact_match", "rouge_l")
_METRIC_TITLES = {"exact_match": "Exact match", "rouge_l": "ROUGE-L"}


def _reference(record: Mapping[str, Any], reference: str) -> str:
    if reference == "outputs":
        return record["outputs"]
    if reference == "original_answer":
        meta = json.loads(record.get("meta") or "{}")
        return meta.get("original_answer", record["outputs"])
    raise ValueError(f"reference must be 'outputs' or 'original_answer', got {reference!r}")


def score_predictions(
    records: Iterable[Mapping[str, Any]],
    predictions: Mapping[str, str] | Sequence[str],
    reference: str = "outputs",
) -> dict[str, dict[str, float]]:
    """Mean exact match and ROUGE-L per task: ``{task: {exact_match, rouge_l, n}}``.

    ``predictions`` is a mapping from record id to text, or a sequence aligned with ``records``.
    A record without a prediction scores 0 (it is counted, not skipped). ``reference`` picks the
    ground truth: the record's ``outputs`` (rephrased where the task rephrases) or
    ``meta.original_answer`` (the short answer).
    """
    records = list(records)
    if not isinstance(predictions, Mapping):
        if len(predictions) != len(records):
            raise ValueError(f"{len(predictions)} predictions for {len(records)} records; pass a dict keyed by id")
        predictions = {rec["id"]: pred for rec, pred in zip(records, predictions)}
    sums: dict[str, dict[str, float]] = {}
    for rec in records:
        pred = predictions.get(rec["id"], "") or ""
        ref = _reference(rec, reference)
        acc = sums.setdefault(rec["task"], {"exact_match": 0.0, "rouge_l": 0.0, "n": 0})
        acc["exact_match"] += exact_match(pred, ref)
        acc["rouge_l"] += rouge_l(pred, ref, rec.get("lang", "en"))
        acc["n"] += 1
    return {
        task: {"exact_match": a["exact_match"] / a["n"], "rouge_l": a["rouge_l"] / a["n"], "n": a["n"]}
        for task, a in sorted(sums.items())
    }


def write_metrics(run_eval_dir: str, metrics: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """Write ``<dir>/metrics.json`` shaped ``{model: {task: {exact_match, rouge_l, n}}}``; returns its path."""
    for model, tasks in metrics.items():
        for task, scores in tasks.items():
            missing = {"exact_match", "rouge_l", "n"} - set(scores)
            if missing:
                raise ValueError(f"metrics[{model!r}][{task!r}] lacks {sorted(missing)}")
    path = storage.join(run_eval_dir, "metrics.json")
    storage.write_json_atomic(path, metrics)
    return path


def _table(metrics: Mapping[str, Mapping[str, Mapping[str, float]]], metric: str, tasks: list[str]) -> str:
    lines = ["| model | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
    for model, per_task in metrics.items():
        cells = []
        for task in tasks:
            scores = per_task.get(task)
            cells.append(f"{100 * scores[metric]:.1f}" if scores and metric in scores else "–")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_report(
    metrics: Mapping[str, Mapping[str, Mapping[str, float]]],
    extras: Mapping[str, str] | None = None,
    title: str = "Evaluation report",
) -> str:
    """Markdown: one table per metric (rows models, columns tasks), the tokenizers, then ``extras``."""
    tasks = sorted({task for per_task in metrics.values() for task in per_task})
    out = [f"# {title}", ""]
    out.append("Scores are x100. Instances per task: " + (", ".join(
        f"{t}={_n_of(metrics, t)}" for t in tasks) or "none") + ".")
    out.append("")
    for metric in METRIC_NAMES:
        out += [f"## {_METRIC_TITLES[metric]}", "", _table(metrics, metric, tasks), ""]
    out += ["## ROUGE-L tokenization", ""]
    out += [f"- `{lang}`: {desc}" for lang, desc in ROUGE_TOKENIZERS.items()]
    out.append("")
    for heading, body in (extras or {}).items():
        out += [f"## {heading}", "", body.rstrip(), ""]
    return "\n".join(out)


def _n_of(metrics: Mapping[str, Mapping[str, Mapping[str, float]]], task: str) -> str:
    ns = sorted({int(per_task[task]["n"]) for per_task in metrics.values() if task in per_task})
    return "/".join(str(n) for n in ns)
