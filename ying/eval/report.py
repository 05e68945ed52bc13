"""Per-task scores, ``metrics.json`` and the Markdown report.

Scores are stored as fractions in [0, 1]; the report prints them x100, as the paper's tables do.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping, Sequence

from ying import storage
from ying.eval.metrics import ROUGE_TOKENIZERS, exact_match, rouge_l

__all__ = [
    "METRIC_NAMES",
    "score_predictions",
    "write_metrics",
    "render_report",
    "render_paper_tables",
    "render_suite_table",
    "render_judge",
    "figure4_plot",
    "figure5_plot",
]

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


# ---- the paper's tables, from paper_results.json -------------------------------------------------

_COLUMN_TITLES = {"len": "Len", "chair_i": "CHAIR_I (↓)", "chair_s": "CHAIR_S (↓)", "avg": "Avg. (↓)"}


def _cell(column: str, value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.1f}" if column == "len" else f"{100 * value:.1f}"


def render_suite_table(suite: Mapping[str, Any]) -> str:
    """One paper table: rows models, columns the suite's measured columns (x100, Len in words)."""
    head = f"### {suite['paper']}: {suite['title']}"
    lines = [head, ""]
    if not suite["status"].startswith("ok"):
        lines += [f"- {task}: not run: {why}" for task, why in suite.get("not_run", {}).items()]
        return "\n".join(lines + [""])
    columns: list[str] = list(suite.get("columns") or [])
    for row in suite["rows"].values():
        columns += [c for c in row["scores"] if c not in columns]
    lines.append("| model | " + " | ".join(_COLUMN_TITLES.get(c, c) for c in columns) + " |")
    lines.append("|---|" + "---:|" * len(columns))
    for model, row in suite["rows"].items():
        lines.append(f"| {model} | " + " | ".join(_cell(c, row["scores"].get(c)) for c in columns) + " |")
    n = next(iter(suite["rows"].values()))["n"]
    lines += ["", "n: " + ", ".join(f"{c}={n[c]}" for c in columns if c in n)]
    if suite.get("chair"):
        lines.append(f"CHAIR vocabulary `{suite['chair']['vocabulary']}`; ground truth: "
                     + "; ".join(suite["chair"]["ground_truth"]))
    for task, why in suite.get("not_run", {}).items():
        lines.append(f"- {task}: not run: {why}")
    for note in suite.get("notes", []):
        lines.append(f"- {note}")
    return "\n".join(lines + [""])


def render_judge(judge: Mapping[str, Any]) -> str:
    if judge.get("status") != "ok":
        return "judge: not configured (set eval.judge.base_url to an OpenAI-compatible endpoint)"
    s = judge["settings"]
    out = [f"judge model `{s['model']}`, temperature {s['temperature']}, {s['samples_per_order']} samples per order, "
           f"both orders; Table 13 prompt sha256 `{s['pairwise_prompt_sha256']}`, video QA prompt sha256 "
           f"`{s['video_prompt_sha256']}`. A failed request is missing, never a score.", ""]
    if judge["pairwise"]:
        out += [f"### Figure 4: pairwise judge, `{judge.get('ours')}` vs each baseline", "",
                "| baseline | win | tie | lose | judged / total (coverage) |", "|---|---:|---:|---:|---|"]
        for base, r in judge["pairwise"].items():
            out.append(f"| {base} | {r['win']} | {r['tie']} | {r['lose']} | {r['judged']}/{r['total']} "
                       f"({100 * r['coverage']:.0f}%) |")
        out += ["", "![Figure 4](eval/figure4.png)", ""]
    elif judge.get("pairwise_not_run"):
        out += [f"Figure 4 not run: {judge['pairwise_not_run']}", ""]
    if judge["video_accuracy"]:
        tasks = sorted({t for per in judge["video_accuracy"].values() for t in per})
        out += ["### Table 8: judged video QA accuracy", "", "| model | " + " | ".join(tasks) + " |",
                "|---|" + "---:|" * len(tasks)]
        for model, per in judge["video_accuracy"].items():
            cells = []
            for t in tasks:
                r = per.get(t)
                if r is None:
                    cells.append("–")
                elif r["accuracy"] is None:
                    cells.append(f"no score (coverage {r['judged']}/{r['total']})")
                else:
                    cells.append(f"{100 * r['accuracy']:.1f} ({r['judged']}/{r['total']})")
            out.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def figure5_plot(suite: Mapping[str, Any]) -> bytes | None:
    """Bars of ROUGE-L with seen vs unseen instructions per task, per Ying model (paper Figure 5)."""
    if not suite["status"].startswith("ok"):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in suite["rows"] if m != "majority-answer"]
    tasks = sorted({c.split("/")[0] for m in models for c in suite["rows"][m]["scores"]})
    fig, axes = plt.subplots(1, len(models), figsize=(4 * len(models), 3.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        scores = suite["rows"][model]["scores"]
        xs = range(len(tasks))
        ax.bar([x - 0.2 for x in xs], [100 * (scores.get(f"{t}/seen") or 0) for t in tasks], 0.4, label="seen")
        ax.bar([x + 0.2 for x in xs], [100 * (scores.get(f"{t}/unseen") or 0) for t in tasks], 0.4, label="unseen")
        ax.set_xticks(list(xs), tasks, rotation=30, ha="right")
        ax.set_title(model)
        ax.set_ylabel("ROUGE-L")
        ax.legend()
    fig.tight_layout()
    return _png(fig)


def figure4_plot(pairwise: Mapping[str, Mapping[str, Any]]) -> bytes | None:
    """Stacked win/tie/lose bars per baseline (paper Figure 4)."""
    if not pairwise:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(pairwise)
    fig, ax = plt.subplots(figsize=(6, 0.6 + 0.6 * len(names)))
    left = [0.0] * len(names)
    for key, color in (("win", "#4c9a2a"), ("tie", "#bbbbbb"), ("lose", "#c0392b")):
        vals = [pairwise[n][key] for n in names]
        ax.barh(names, vals, left=left, color=color, label=key)
        left = [a + b for a, b in zip(left, vals)]
    ax.set_xlabel("judged examples (ours vs baseline)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return _png(fig)


def _png(fig) -> bytes:
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def render_paper_tables(results: Mapping[str, Any]) -> str:
    """The paper's tables filled from ``paper_results.json``, in paper order, then the judge."""
    out = ["Every number below is in `eval/paper_results.json`. Greedy decoding. Scores x100.", ""]
    from ying.eval.suites import SUITES

    suites = results.get("suites", {})
    for name in sorted(suites, key=lambda n: list(SUITES).index(n) if n in SUITES else len(SUITES)):
        out.append(render_suite_table(suites[name]))
    out += ["### LLM judge", "", render_judge(results.get("judge", {})), ""]
    return "\n".join(out)
