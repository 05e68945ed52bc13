"""The ablations' results: the plots in the style of the paper's Figures 9 and 10 (Figure 5's is the
eval report's), their markdown tables, and the Reproduction table (one row per claim of the paper).

Plain functions of plain data (no Ray), so the report can be rebuilt from ``results.json``.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Iterable, Mapping

__all__ = [
    "summarize_points",
    "plot_figure",
    "ablation_tables",
    "reproduction_rows",
    "reproduction_table",
]


def summarize_points(points: Iterable[Mapping[str, Any]]) -> list[dict]:
    """Mean, standard deviation (over seeds) and seed count per value, in value order."""
    by_value: dict[Any, list[float]] = {}
    for p in points:
        if p.get("score") is not None:
            by_value.setdefault(p["value"], []).append(float(p["score"]))
    out = []
    for value in sorted(by_value, key=_value_order):
        scores = by_value[value]
        out.append({"value": value, "mean": statistics.fmean(scores),
                    "std": statistics.stdev(scores) if len(scores) > 1 else 0.0, "seeds": len(scores)})
    return out


def _value_order(value: Any) -> tuple:
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def plot_figure(entry: Mapping[str, Any], path: str, title: str, xlabel: str, per_task: bool = False) -> str:
    """A line plot of score against the searched value, error bars over seeds (Figures 9 and 10)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ying import storage

    summary = summarize_points(entry["points"])
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    xs = list(range(len(summary)))
    if per_task:  # the paper's Figure 10 also draws each evaluation task
        tasks = sorted({t for p in entry["points"] for t in (p.get("per_task") or {})})
        for task in tasks:
            ys = []
            for s in summary:
                vals = [p["per_task"][task] for p in entry["points"]
                        if p["value"] == s["value"] and task in (p.get("per_task") or {})]
                ys.append(statistics.fmean(vals) if vals else math.nan)
            ax.plot(xs, ys, marker=".", linewidth=1, alpha=0.6, label=task)
    ax.errorbar(xs, [s["mean"] for s in summary], yerr=[s["std"] for s in summary], marker="o", linewidth=2,
                color="black", capsize=4, label="average" if per_task else None)
    ax.set_xticks(xs, [str(s["value"]) for s in summary])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(entry.get("metric_short", "ROUGE-L"))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if per_task:
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    storage.write_bytes_atomic(path, buf.getvalue())
    return path


def ablation_tables(results: Mapping[str, Any]) -> str:
    """The ablations as markdown: one table per experiment, mean ± std over seeds."""
    names = {"figure9": ("Figure 9: instructions per task", "instructions per task"),
             "figure10": ("Figure 10: number of training tasks", "training tasks"),
             "answers": ("Rephrased vs raw answers (Table 5's Len)", "answers")}
    parts = []
    for key, (title, column) in names.items():
        entry = results.get(key)
        if not entry or not entry.get("points"):
            continue
        parts.append(f"**{title}** ({entry['metric']})\n")
        extra = "| mean answer words " if key == "answers" else ""
        parts.append(f"| {column} | score (mean ± std) | seeds {extra}|")
        parts.append("|---|---:|---:|" + ("---:|" if extra else ""))
        words = {}
        if key == "answers":
            for p in entry["points"]:
                words.setdefault(p["value"], []).append(p.get("answer_words", math.nan))
        for s in summarize_points(entry["points"]):
            spread = f" ± {s['std']:.1f}" if s["seeds"] > 1 else ""  # one seed has no spread to show
            cells = f"| {s['value']} | {s['mean']:.1f}{spread} | {s['seeds']} |"
            if extra:
                cells += f" {statistics.fmean(words[s['value']]):.1f} |"
            parts.append(cells)
        if entry.get("plot"):
            parts.append(f"\n![{title}]({entry['plot']})")
        parts.append("")
    return "\n".join(parts)


def _row(claim: str, source: str, ours: str, direction: str, margin: float | None, holds: bool | None,
         note: str = "") -> dict:
    verdict = "not measured" if holds is None else ("holds" if holds else "does not hold")
    return {"claim": claim, "paper": source, "ours": ours, "direction": direction,
            "margin": None if margin is None else round(margin, 2), "verdict": verdict, "note": note}


def _mean(values: Iterable[float]) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.fmean(values) if values else None


def reproduction_rows(task_scores: Mapping[str, Mapping[str, Mapping[str, float]]], held_out: list[str],
                      chinese: list[str], video: list[str], seen_unseen: Mapping[str, Mapping[str, float]],
                      ablations: Mapping[str, Any] | None, noise: float = 1.0,
                      little_drop: float = 0.1) -> list[dict]:
    """One row per claim of the paper.

    ``task_scores``: {model: {task: {"rouge_l": 0..1}}} for "stage1" and "stage2"; ``seen_unseen``:
    {task: {"seen", "unseen"}} in ROUGE-L points. A difference counts when it exceeds ``noise``
    ROUGE-L points; "little" means an unseen-instruction drop under ``little_drop`` of the seen score.
    """

    def rouge(model: str, tasks: list[str]) -> float | None:
        scores = task_scores.get(model, {})
        return _mean(100 * scores[t]["rouge_l"] for t in tasks if t in scores)

    rows = []
    for claim, source, tasks in (
        ("Stage II beats Stage I on held-out tasks", "Tables 6, 7", held_out),
        ("zero-shot Chinese improves after English image-only instruction tuning", "Table 6", chinese),
        ("zero-shot video improves after image-only instruction tuning", "Table 7", video),
    ):
        s1, s2 = rouge("stage1", tasks), rouge("stage2", tasks)
        if s1 is None or s2 is None:
            rows.append(_row(claim, source, "no such tasks in this run", "Stage II > Stage I", None, None))
            continue
        rows.append(_row(claim, source, f"Stage II {s2:.1f} vs Stage I {s1:.1f} ROUGE-L ({', '.join(tasks)})",
                         "Stage II > Stage I", s2 - s1, s2 - s1 > noise))

    answers = (ablations or {}).get("answers", {}).get("points") or []
    words = {v: _mean(p.get("answer_words") for p in answers if p["value"] == v) for v in ("rephrased", "raw")}
    if words["rephrased"] is not None and words["raw"] is not None:
        rows.append(_row("rephrased answers give longer answers", "Table 5 (Len), §2.2",
                         f"{words['rephrased']:.1f} vs {words['raw']:.1f} words per answer",
                         "rephrased > raw", words["rephrased"] - words["raw"], words["rephrased"] > words["raw"]))
    else:
        rows.append(_row("rephrased answers give longer answers", "Table 5 (Len), §2.2", "not run",
                         "rephrased > raw", None, None))

    fig9 = summarize_points((ablations or {}).get("figure9", {}).get("points") or [])
    by_k = {s["value"]: s["mean"] for s in fig9 if isinstance(s["value"], int)}
    if 1 in by_k and 4 in by_k and len(by_k) >= 3:
        top = max(by_k)
        gain, after = by_k[4] - by_k[1], by_k[top] - by_k[4]
        holds = gain > noise and after <= max(noise, gain / 2)
        rows.append(_row("more instructions per task help up to about 4, then flatten", "Figure 9",
                         ", ".join(f"k={k}: {v:.1f}" for k, v in sorted(by_k.items())),
                         "score(4) > score(1); score(max) - score(4) small", gain, holds,
                         f"gain 1->4 {gain:+.1f}, change 4->{top} {after:+.1f}"))
    else:
        rows.append(_row("more instructions per task help up to about 4, then flatten", "Figure 9",
                         "needs k = 1, 4 and one more", "", None, None))

    fig10 = summarize_points((ablations or {}).get("figure10", {}).get("points") or [])
    if len(fig10) >= 2:
        first, last = fig10[0], fig10[-1]
        rank = _spearman([_numeric(s["value"], fig10) for s in fig10], [s["mean"] for s in fig10])
        margin = last["mean"] - first["mean"]
        rows.append(_row("more training tasks help", "Figure 10",
                         ", ".join(f"{s['value']}: {s['mean']:.1f}" for s in fig10),
                         "score rises with the number of tasks", margin, margin > noise and rank > 0,
                         f"Spearman rho {rank:+.2f}"))
    else:
        rows.append(_row("more training tasks help", "Figure 10", "not run", "", None, None))

    seen = _mean(v["seen"] for v in seen_unseen.values())
    unseen = _mean(v["unseen"] for v in seen_unseen.values())
    if seen is not None and unseen is not None:
        drop = seen - unseen
        rows.append(_row("unseen instructions cost little", "Figure 5 (0.23 ROUGE-L drop)",
                         f"seen {seen:.1f} vs unseen {unseen:.1f} ROUGE-L (mean over {len(seen_unseen)} tasks)",
                         "drop small", drop, drop <= little_drop * max(seen, 1e-9),
                         f"drop {drop:.1f} = {100 * drop / max(seen, 1e-9):.0f}% of the seen score"))
    else:
        rows.append(_row("unseen instructions cost little", "Figure 5", "not measured", "", None, None))
    return rows


def _numeric(value: Any, summary: list[dict]) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    return max((s["value"] for s in summary if isinstance(s["value"], (int, float))), default=0) + 1.0  # "all"


def _spearman(xs: list[float], ys: list[float]) -> float:
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        for rank, i in enumerate(order):
            r[i] = float(rank)
        return r

    rx, ry = ranks(xs), ranks(ys)
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    sy = math.sqrt(sum((b - my) ** 2 for b in ry))
    return cov / (sx * sy) if sx and sy else 0.0


def reproduction_table(rows: list[dict]) -> str:
    lines = ["| claim | paper | ours | direction | margin | verdict |", "|---|---|---|---|---:|---|"]
    for r in rows:
        margin = "" if r["margin"] is None else f"{r['margin']:+.2f}"
        note = f" ({r['note']})" if r["note"] else ""
        lines.append(f"| {r['claim']} | {r['paper']} | {r['ours']}{note} | {r['direction']} | {margin} | "
                     f"{r['verdict']} |")
    return "\n".join(lines)
