"""The ablations' results as the report shows them: the plots in the style of the paper's Figures 9
and 10 (Figure 5's is the eval report's), their markdown tables, and the Reproduction table (one
row per claim of the paper, with the seeds it rests on, their spread and a verdict the spread allows).

Plain functions of plain data (no Ray), so the report can be rebuilt from ``results.json``.

The verdict rule (``VERDICT_RULE`` is the report's wording of it): every value a claim compares is
an interval over the seeds it was measured with: the min-max with two seeds, a 95% t confidence
interval of the mean with three or more, and with one seed, which measures no spread, the value
plus or minus half of ``one_seed_noise`` (10 ROUGE-L points, 2 words per answer), or of the largest
gap the run's own Figure 10 trials show between two seeds on the same tasks where that is larger
(``measured_seed_gap``: on the tiny preset's held-out tasks it was 22 points, where the eval's
one-seed rows had read "holds" on one machine and "inconclusive" on another). A claim "A is above B" holds
when A's interval lies wholly above B's, does not hold when it lies wholly below, and is
inconclusive when they overlap; a claim "the drop is small" compares the drop's interval with the
bound the same way.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Iterable, Mapping

__all__ = [
    "summarize_points",
    "interval",
    "plot_figure",
    "ablation_tables",
    "reproduction_rows",
    "reproduction_table",
    "VERDICT_RULE",
    "ONE_SEED_NOISE",
    "measured_seed_gap",
    "UNSEEN_FROM",
]

# Figure 9: a trial with k <= 8 instructions per task draws them from the first 8 of each pool, so
# instructions 9 and 10 stay unseen (the same constant as ying.train.ingest.UNSEEN_FROM).
UNSEEN_FROM = 8

# With one seed no spread is measured: a difference must exceed this to decide a claim.
ONE_SEED_NOISE = {"ROUGE-L": 10.0, "words": 2.0}
LITTLE_DROP = 0.1  # "unseen instructions cost little": a drop under 10% of the seen score

VERDICT_RULE = (
    "Each number is a mean over the seeds named in its row, shown with its spread: the min-max over two "
    "seeds, a 95% t confidence interval of the mean over three or more. A row says \"holds\" or \"does not "
    "hold\" only when the difference that decides it exceeds that spread (the intervals do not overlap), "
    "and \"inconclusive\" otherwise. One seed measures no spread: its numbers count as plus or minus "
    f"{ONE_SEED_NOISE['ROUGE-L'] / 2:g} ROUGE-L points ({ONE_SEED_NOISE['words'] / 2:g} words per answer), "
    "and a Stage II vs Stage I row plus or minus half the largest gap between two seeds of one of this run's "
    "Figure 10 trials on its tasks where that is larger (the row names it). \"More tasks "
    "help\" holds only when training on all tasks scores above every smaller subset and does not hold "
    "when a smaller subset scores above all tasks; \"little\" means a drop under "
    f"{100 * LITTLE_DROP:.0f}% of the seen score.")

# Two-sided 95% Student t quantiles by degrees of freedom (n seeds - 1); 1.96 beyond the table.
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
         10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def _t975(df: int) -> float:
    known = [d for d in _T975 if d <= df]
    return _T975[max(known)] if df <= 30 else 1.96  # the next smaller df in the table: a wider interval


def interval(values: list[float], one_seed_noise: float = ONE_SEED_NOISE["ROUGE-L"]) -> tuple[float, float]:
    """The spread of a mean over seeds: min-max (2 seeds), 95% t CI (3+), +-noise/2 (1 seed)."""
    if not values:
        raise ValueError("no values")
    mean = statistics.fmean(values)
    if len(values) == 1:
        return mean - one_seed_noise / 2, mean + one_seed_noise / 2
    if len(values) == 2:
        return min(values), max(values)
    half = _t975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean - half, mean + half


def _spread_kind(n: int) -> str:
    return {0: "", 1: "one seed", 2: "min-max"}.get(n, "95% CI")


def summarize_points(points: Iterable[Mapping[str, Any]], key: str = "score",
                     one_seed_noise: float = ONE_SEED_NOISE["ROUGE-L"]) -> list[dict]:
    """Per value, in value order: mean, std, the seeds, their scores and the interval over them."""
    by_value: dict[Any, dict[int, float]] = {}
    for p in points:
        if p.get(key) is not None and not (isinstance(p[key], float) and math.isnan(p[key])):
            by_value.setdefault(p["value"], {})[p.get("seed", 0)] = float(p[key])
    out = []
    for value in sorted(by_value, key=_value_order):
        seeds = sorted(by_value[value])
        scores = [by_value[value][s] for s in seeds]
        lo, hi = interval(scores, one_seed_noise)
        out.append({"value": value, "mean": statistics.fmean(scores),
                    "std": statistics.stdev(scores) if len(scores) > 1 else 0.0, "seeds": seeds,
                    "scores": scores, "low": lo, "high": hi, "spread": _spread_kind(len(scores))})
    return out


def _value_order(value: Any) -> tuple:
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def plot_figure(entry: Mapping[str, Any], path: str, title: str, xlabel: str, per_task: bool = False) -> str:
    """A line plot of score against the searched value; the bars are each value's spread over seeds
    (min-max with two seeds, 95% CI with three or more; none with one)."""
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
    means = [s["mean"] for s in summary]
    errors = [[0.0 if len(s["seeds"]) < 2 else s["mean"] - s["low"] for s in summary],
              [0.0 if len(s["seeds"]) < 2 else s["high"] - s["mean"] for s in summary]]
    seeds = sorted({seed for s in summary for seed in s["seeds"]})
    ax.errorbar(xs, means, yerr=errors, marker="o", linewidth=2, color="black", capsize=4,
                label="average" if per_task else None)
    ax.set_xticks(xs, [str(s["value"]) for s in summary])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(entry.get("metric_short", "ROUGE-L"))
    ax.set_title(f"{title}\nseeds {', '.join(map(str, seeds))}", fontsize=10)
    ax.grid(alpha=0.3)
    if per_task:
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    storage.write_bytes_atomic(path, buf.getvalue())
    return path


def _fmt(s: Mapping[str, Any], digits: int = 1) -> str:
    """``mean [low-high]`` (the spread over seeds), or the mean alone for one seed."""
    if len(s["seeds"]) < 2:
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} [{s['low']:.{digits}f}-{s['high']:.{digits}f}]"


def _seeds(seeds: Iterable[int]) -> str:
    seeds = sorted(set(seeds))
    return ", ".join(map(str, seeds)) if seeds else "-"


def ablation_tables(results: Mapping[str, Any]) -> str:
    """The ablations as markdown: one table per experiment, the mean with its spread over seeds."""
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
        parts.append(f"| {column} | score | spread | seeds {extra}|")
        parts.append("|---|---:|---|---|" + ("---:|" if extra else ""))
        words = {s["value"]: s for s in summarize_points(entry["points"], "answer_words", ONE_SEED_NOISE["words"])}
        for s in summarize_points(entry["points"]):
            spread = ("-" if len(s["seeds"]) < 2  # one seed has no spread to show
                      else f"{s['low']:.1f}-{s['high']:.1f} ({s['spread']})")
            cells = f"| {s['value']} | {s['mean']:.1f} | {spread} | {_seeds(s['seeds'])} |"
            if extra:
                cells += f" {_fmt(words[s['value']]) if s['value'] in words else 'n/a'} |"
            parts.append(cells)
        notes = sorted({p["note"] for p in entry["points"] if p.get("note")})
        if notes:
            parts.append("\n" + "; ".join(notes) + ".")
        if entry.get("plot"):
            parts.append(f"\n![{title}]({entry['plot']})")
        parts.append("")
    return "\n".join(parts)


def _row(claim: str, source: str, ours: str, direction: str, margin: float | None, verdict: str | None,
         seeds: Iterable[int] = (), spread: str = "", note: str = "") -> dict:
    return {"claim": claim, "paper": source, "ours": ours, "direction": direction,
            "margin": None if margin is None else round(margin, 2),
            "verdict": "not measured" if verdict is None else verdict,
            "seeds": sorted(set(seeds)), "spread": spread, "note": note}


def _above(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    """Whether ``a`` is above ``b`` beyond the spread of both: their intervals do not overlap."""
    if a["low"] > b["high"]:
        return "holds"
    if a["high"] < b["low"]:
        return "does not hold"
    return "inconclusive"


def _single(value: float, seed: int, noise: float = ONE_SEED_NOISE["ROUGE-L"]) -> dict:
    lo, hi = interval([value], noise)
    return {"mean": value, "low": lo, "high": hi, "seeds": [seed], "spread": "one seed"}


def _spread_of(*summaries: Mapping[str, Any]) -> str:
    kinds = sorted({s["spread"] for s in summaries if s.get("spread")})
    return ", ".join(kinds)


def _mean(values: Iterable[float]) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.fmean(values) if values else None


def reproduction_rows(task_scores: Mapping[str, Mapping[str, Mapping[str, float]]], held_out: list[str],
                      chinese: list[str], video: list[str], seen_unseen: Mapping[str, Mapping[str, float]],
                      ablations: Mapping[str, Any] | None, run_seed: int = 0,
                      little_drop: float = LITTLE_DROP) -> list[dict]:
    """One row per claim of the paper, judged by the rule of the module docstring (``VERDICT_RULE``).

    ``task_scores``: {model: {task: {"rouge_l": 0..1}}} for "stage1" and "stage2" of the run (seed
    ``run_seed``); ``seen_unseen``: {task: {"seen", "unseen"}} in ROUGE-L points from the run's
    Figure 5 suite, used for the unseen-instructions row unless the ablations' Figure 9 trials at
    k = 8 measured it over their seeds. Each row carries ``seeds`` and ``spread`` (how the
    intervals were drawn); "little" means a drop under ``little_drop`` of the seen score.
    """
    ablations = ablations or {}

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
        gap = measured_seed_gap(ablations, tasks)
        noise = max(ONE_SEED_NOISE["ROUGE-L"], gap or 0.0)
        a, b = _single(s2, run_seed, noise), _single(s1, run_seed, noise)
        spread = "one seed, the run's" + (f"; +-{noise / 2:.1f}: Figure 10's seed gap" if noise > ONE_SEED_NOISE["ROUGE-L"]
                                          else "")
        rows.append(_row(claim, source, f"Stage II {s2:.1f} vs Stage I {s1:.1f} ROUGE-L ({', '.join(tasks)})",
                         "Stage II > Stage I", s2 - s1, _above(a, b), [run_seed], spread))

    answers = ablations.get("answers", {}).get("points") or []
    words = {s["value"]: s for s in summarize_points(answers, "answer_words", ONE_SEED_NOISE["words"])}
    claim, source = "rephrased answers give longer answers", "Table 5 (Len), §2.2"
    if "rephrased" in words and "raw" in words:
        a, b = words["rephrased"], words["raw"]
        rows.append(_row(claim, source, f"{_fmt(a)} vs {_fmt(b)} words per answer", "rephrased > raw",
                         a["mean"] - b["mean"], _above(a, b), a["seeds"] + b["seeds"], _spread_of(a, b)))
    else:
        rows.append(_row(claim, source, "not run", "rephrased > raw", None, None))

    rows.append(_figure9_row(ablations))
    rows.append(_figure10_row(ablations))
    rows.append(_unseen_row(ablations, seen_unseen, run_seed, little_drop))
    return rows


def measured_seed_gap(ablations: Mapping[str, Any] | None, tasks: list[str]) -> float | None:
    """The largest gap, in ROUGE-L points, between two seeds of one Figure 10 trial (the same task
    count) in the mean over ``tasks`` (Figure 10 scores the held-out tasks, per task); None where no
    trial ran two seeds or scored those tasks. How far one seed can be from another on these tasks:
    a one-seed comparison must clear it."""
    by_value: dict[str, list[float]] = {}
    for point in (ablations or {}).get("figure10", {}).get("points") or []:
        per_task = point.get("per_task") or {}
        if tasks and all(per_task.get(t) is not None for t in tasks):
            by_value.setdefault(str(point["value"]), []).append(statistics.fmean(per_task[t] for t in tasks))
    gaps = [max(scores) - min(scores) for scores in by_value.values() if len(scores) >= 2]
    return max(gaps) if gaps else None


def _figure9_row(ablations: Mapping[str, Any]) -> dict:
    """Figure 9: more instructions per task help (the paper: four suffice). Judged between the
    fewest and the most instructions no trial trained on the evaluation's unseen ones with (k <= 8)."""
    claim, source = "more instructions per task help", "Figure 9"
    summary = summarize_points(ablations.get("figure9", {}).get("points") or [])
    fair = [s for s in summary if isinstance(s["value"], int) and s["value"] <= UNSEEN_FROM]
    if len(fair) < 2:
        return _row(claim, source, f"needs two values of k up to {UNSEEN_FROM}", "", None, None)
    low, high = fair[0], fair[-1]
    shown = ", ".join(f"k={s['value']}: {_fmt(s)}" + ("*" if s["value"] > UNSEEN_FROM else "") for s in summary)
    note = f"judged k={low['value']} vs k={high['value']}; the paper also finds 4 instructions suffice"
    if any(s["value"] > UNSEEN_FROM for s in summary):
        note += f"; *k>{UNSEEN_FROM} trained on the unseen instructions, not judged"
    return _row(claim, source, shown, f"score(k={high['value']}) > score(k={low['value']})",
                high["mean"] - low["mean"], _above(high, low), [x for s in summary for x in s["seeds"]],
                _spread_of(*summary), note)


def _figure10_row(ablations: Mapping[str, Any]) -> dict:
    """Figure 10: more training tasks help. Holds only when all tasks score above every smaller
    subset beyond the spread and the trend rises; does not hold when a smaller subset scores above
    all tasks beyond the spread; inconclusive otherwise."""
    claim, source = "more training tasks help", "Figure 10"
    summary = summarize_points(ablations.get("figure10", {}).get("points") or [])
    if len(summary) < 2:
        return _row(claim, source, "not run", "", None, None)
    last, subsets = summary[-1], summary[:-1]
    rank = _spearman([_numeric(s["value"], summary) for s in summary], [s["mean"] for s in summary])
    judged = [_above(last, s) for s in subsets]
    if "does not hold" in judged:
        verdict = "does not hold"
    elif all(j == "holds" for j in judged) and rank > 0:
        verdict = "holds"
    else:
        verdict = "inconclusive"
    margin = last["mean"] - max(s["mean"] for s in subsets)  # all tasks vs the best smaller subset
    return _row(claim, source, ", ".join(f"{s['value']}: {_fmt(s)}" for s in summary),
                f"{last['value']} tasks above every smaller subset", margin, verdict,
                [x for s in summary for x in s["seeds"]], _spread_of(*summary), f"Spearman rho {rank:+.2f}")


def _unseen_row(ablations: Mapping[str, Any], seen_unseen: Mapping[str, Mapping[str, float]], run_seed: int,
                little_drop: float) -> dict:
    """Figure 5: unseen instructions cost little. From the Figure 9 trials at k = 8 (trained on
    exactly instructions 1-8 of each pool, asked with 9-10) over their seeds when they ran, else
    from the run's own Figure 5 suite (one seed)."""
    claim, source = "unseen instructions cost little", "Figure 5 (0.23 ROUGE-L drop)"
    per_seed: dict[int, tuple[float, float]] = {}
    for p in ablations.get("figure9", {}).get("points") or []:
        pairs = p.get("seen_unseen") or {}
        pairs = {t: v for t, v in pairs.items() if v.get("seen") is not None and v.get("unseen") is not None}
        if p.get("value") == UNSEEN_FROM and p.get("score") is not None and pairs:
            per_seed[p["seed"]] = (statistics.fmean(v["seen"] for v in pairs.values()),
                                   statistics.fmean(v["unseen"] for v in pairs.values()))
    if per_seed:
        where = f"Figure 9 trials at k={UNSEEN_FROM}, instructions 9-10 unseen"
        n_tasks = len({t for p in ablations["figure9"]["points"] for t in (p.get("seen_unseen") or {})})
    else:
        seen = _mean(v["seen"] for v in seen_unseen.values())
        unseen = _mean(v["unseen"] for v in seen_unseen.values())
        if seen is None or unseen is None:
            return _row(claim, "Figure 5", "not measured", "", None, None)
        per_seed = {run_seed: (seen, unseen)}
        where, n_tasks = "the run's Figure 5 suite", len(seen_unseen)
    seeds = sorted(per_seed)
    seen = statistics.fmean(per_seed[s][0] for s in seeds)
    unseen = statistics.fmean(per_seed[s][1] for s in seeds)
    drops = [per_seed[s][0] - per_seed[s][1] for s in seeds]
    lo, hi = interval(drops)
    bound = little_drop * max(seen, 1e-9)
    verdict = "holds" if hi < bound else "does not hold" if lo > bound else "inconclusive"
    drop = statistics.fmean(drops)
    spread = "" if len(seeds) < 2 else f" [{lo:.1f}-{hi:.1f}]"
    return _row(claim, source, f"seen {seen:.1f} vs unseen {unseen:.1f} ROUGE-L (mean over {n_tasks} tasks; {where})",
                f"drop < {100 * little_drop:.0f}% of seen ({bound:.1f})", drop, verdict, seeds,
                _spread_kind(len(seeds)), f"drop {drop:.1f}{spread} = {100 * drop / max(seen, 1e-9):.0f}% of the seen score")


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
    """The rows as markdown; ``ours`` shows each mean with its [low-high] spread over the seeds."""
    lines = ["| claim | paper | ours | direction | margin | seeds (spread) | verdict |",
             "|---|---|---|---|---:|---|---|"]
    for r in rows:
        margin = "" if r["margin"] is None else f"{r['margin']:+.2f}"
        note = f" ({r['note']})" if r["note"] else ""
        seeds = _seeds(r.get("seeds", []))
        spread = f" ({r['spread']})" if r.get("spread") and r.get("seeds") else ""
        lines.append(f"| {r['claim']} | {r['paper']} | {r['ours']}{note} | {r['direction']} | {margin} | "
                     f"{seeds}{spread} | {r['verdict']} |")
    return "\n".join(lines)
