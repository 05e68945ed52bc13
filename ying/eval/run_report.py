"""``<run_dir>/report.md``: what the run built, how training went, and how the models score.

The scores come from ``ying.eval.report.render_report``; this module adds the run around them:
data counts per task and split, the training summaries with a loss curve, the LR search, the
ablations (Figures 9, 10; Table 5's Len) and the Reproduction section: one row per claim of the paper.
"""

from __future__ import annotations

import io
import os

from ying import storage
from ying.config import YingConfig
from ying.eval.ablation_report import VERDICT_RULE, ablation_tables, reproduction_rows, reproduction_table
from ying.eval.report import figure4_plot, figure5_plot, render_paper_tables, render_report

__all__ = ["write_run_report", "reproduction"]


def _data_table(stats: dict) -> str:
    """read: source records (a LLaVA conversation is one, however many rounds it has); listed: the
    instances and rejects they gave, each of which was written or rejected."""
    lines = ["| task | split | read | listed | written | rejected |", "|---|---|---:|---:|---:|---:|"]
    for task, splits in sorted(stats.items()):
        for split, c in sorted(splits.items()):
            lines.append(f"| {task} | {split} | {c['read']} | {c.get('listed', c['read'])} | {c['written']} | "
                         f"{c['rejected']} |")
    return "\n".join(lines)


def _rephrase_summary(provider: str, model: str, c: dict) -> str:
    failures = ", ".join(f"{k} {v}" for k, v in sorted(c.get("failures", {}).items())) or "none"
    statuses = ", ".join(f"`{k}` {v}" for k, v in sorted(c.get("by_status", {}).items())) or "none"
    return (
        f"- provider `{provider}` (model `{model}` when it is `openai`)\n"
        f"- records rephrased {c.get('rephrased', 0)}, fell back to the template {c.get('fallback', 0)}, "
        f"left as they were (tasks not rephrased) {c.get('untouched', 0)}; by status: {statuses}\n"
        f"- requests {c.get('requests', 0)}, cache hits {c.get('cache_hits', 0)}, failures: {failures}\n"
        f"- tokens: prompt {c.get('prompt_tokens', 0)}, completion {c.get('completion_tokens', 0)}"
    )


def _qc_table(counts: dict) -> str:
    lines = ["| task | split | checked | passed | invalid | eval-only removed | contamination blocked |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for task, splits in sorted(counts.get("tasks", {}).items()):
        for split, c in sorted(splits.items()):
            lines.append(f"| {task} | {split} | {c['checked']} | {c['passed']} | {c.get('invalid', 0)} | "
                         f"{c.get('eval_only', 0)} | {c.get('contamination', 0)} |")
    lines.append("")
    lines.append(f"Checked {counts['checked']} = passed {counts['passed']} + rejected {counts['rejected']}; "
                 f"{counts.get('evaluation_images', 0)} evaluation images guarded against training.")
    return "\n".join(lines)


def _num(value: float | None, fmt: str) -> str:
    """A number as ``fmt``; "–" where there is none (a run without validation data has no val loss)."""
    return "–" if value is None else format(value, fmt)


def _training_table(stages: dict[str, dict]) -> str:
    # "train s" and "start-up s": the run's seconds training, and the rest of its Ray Train run (worker
    # processes, imports, DeepSpeed, validation, checkpoints: ``ying.train.stages.fit_timings``).
    lines = ["| stage | tasks | steps | peak lr | final train loss | val answer loss | samples/s | train s | start-up s "
             "| trainable tensors |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in stages.items():
        plan = s.get("plan", {})
        timings = s.get("timings") or {}
        lines.append(
            f"| {name} | {', '.join(plan.get('tasks', []))} | {s['step']} | {_num(plan.get('lr'), '.1e')} | "
            f"{_num(s['loss'], '.3f')} | {_num(s['val_loss'], '.3f')} | {_num(s['samples_per_s'], '.0f')} | "
            f"{_num(s.get('train_seconds'), '.0f')} | {_num(timings.get('overhead'), '.0f')} | "
            f"{len(s.get('trainable', []))} |"
        )
    return "\n".join(lines)


def _loss_plot(stages: dict[str, dict]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    offset = 0
    for name, s in stages.items():
        hist = s.get("history", [])
        ax.plot([offset + h["step"] for h in hist], [h["loss"] for h in hist], label=name)
        offset += s["step"]
    ax.set_xlabel("optimizer step (Stage II continues after Stage I)")
    ax.set_ylabel("answer-token loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _tune_table(tune: dict) -> str:
    metric = tune["metric"]
    lines = [f"| Stage II peak lr | {metric} | at step | |", "|---:|---:|---:|---|"]
    for t in tune["trials"]:
        value = "failed" if t[metric] is None else f"{t[metric]:.4f}"
        note = "best" if t["lr"] == tune["best_lr"] else ("stopped early by ASHA" if t.get("stopped_early") else "")
        lines.append(f"| {t['lr']:.1e} | {value} | {t.get('step') if t.get('step') is not None else '–'} | {note} |")
    table = "\n".join(lines)
    # A best value on the grid's (or range's) edge: the search says where the next one should look.
    return table + (f"\n\n{tune['edge_warning']}" if tune.get("edge_warning") else "")


def _link(run_dir: str, path: str) -> str:
    """``path`` as report.md (at the run dir's root) links to it."""
    prefix = str(run_dir).rstrip("/") + "/"
    return path[len(prefix):] if path.startswith(prefix) else path


def _zero_shot_groups(cfg: YingConfig) -> tuple[list[str], list[str], list[str]]:
    """Held-out tasks of the run: all of them, the Chinese ones, the video ones (from the adapters' specs)."""
    from ying.data.tasks import get_task

    held_out = [t for t in cfg.data.held_out if t in cfg.data.tasks]
    chinese = [t for t in held_out if get_task(t).SPEC.lang == "zh"]
    video = [t for t in held_out if get_task(t).SPEC.category == "video"]
    return held_out, chinese, video


def reproduction(cfg: YingConfig, metrics: dict, paper_results: dict | None, ablations: dict | None) -> list[dict]:
    """The Reproduction rows from this run's numbers (see ``ying.eval.ablation_report.reproduction_rows``):
    the eval's rows rest on the run's seed, the ablations' on the seeds of their grid."""
    held_out, chinese, video = _zero_shot_groups(cfg)
    seen_unseen: dict[str, dict[str, float]] = {}
    suite = ((paper_results or {}).get("suites") or {}).get("unseen_instructions") or {}
    scores = (suite.get("rows") or {}).get("stage2", {}).get("scores", {}) if str(suite.get("status", "")).startswith("ok") else {}
    for key, value in scores.items():
        task, _, kind = key.rpartition("/")
        if kind in ("seen", "unseen") and value is not None:
            seen_unseen.setdefault(task, {})[kind] = 100 * value
    seen_unseen = {t: v for t, v in seen_unseen.items() if set(v) == {"seen", "unseen"}}
    return reproduction_rows(metrics, held_out, chinese, video, seen_unseen, ablations, run_seed=cfg.run.seed)


def write_run_report(cfg: YingConfig, inputs: dict[str, dict], metrics: dict, eval_dir: str,
                     plot_dir: str | None = None, ablations: dict | None = None,
                     reproduction_rows: list[dict] | None = None) -> str:
    """Write ``<run_dir>/report.md``; plots go to ``plot_dir`` (default ``eval_dir``).

    ``inputs`` are the stage manifests the report draws on (any subset); ``ablations`` is
    ``<run_dir>/ablations/results.json`` when the ablations ran; ``reproduction_rows`` the
    Reproduction rows when the caller has them already (else computed here).
    """
    plot_dir = plot_dir or eval_dir
    outputs = {name: m["outputs"] for name, m in inputs.items()}
    stages = {name: outputs[name] for name in ("stage1", "stage2") if name in outputs}
    extras: dict[str, str] = {}
    extras["Run"] = (
        f"- preset `{cfg.preset}`, seed {cfg.run.seed}, run dir `{cfg.run.run_dir}`\n"
        f"- tasks: {', '.join(cfg.data.tasks)}; held out of Stage II (zero-shot): "
        f"{', '.join(cfg.data.held_out) or 'none'}\n"
        "- models: `majority-answer` predicts each task's most common training output; `stage1` is the "
        "aligned model (captioning only); `stage2` is the instruction-tuned model (Ying-VLM). Greedy decoding."
    )
    variants = {v["model"]: v for name, v in outputs.items() if name.startswith("variant_") and v.get("enabled")}
    if variants:  # the paper's variants: rows beside stage2 in every table below
        extras["Run"] += "\n- variants (rows beside `stage2` in the tables): " + "; ".join(
            f"`{model}` from {v['init']} on {', '.join(v['tasks'])}" for model, v in variants.items())
    m3it = (outputs.get("unify") or {}).get("m3it")
    if m3it:
        extras["Run"] += (f"\n- records from the M3IT release at `{m3it['root']}`: {len(m3it['imported'])} tasks "
                          "imported, answers as released (none rephrased again)")
        if m3it.get("unknown"):
            extras["Run"] += (f"; tasks Ying does not know, trained in Stage II and in no suite: "
                              f"{', '.join(m3it['unknown'])}")
        if m3it.get("left_aside"):
            extras["Run"] += f"; in the release but not in data.tasks, left aside: {', '.join(m3it['left_aside'])}"
        if m3it.get("missing"):
            extras["Run"] += f"; in data.tasks but not in the release: {', '.join(m3it['missing'])}"
    if "unify" in outputs:
        extras["Data (unify: listed = written + rejected)"] = _data_table(outputs["unify"]["stats"])
    if "rephrase" in outputs:
        c = outputs["rephrase"]["counts"]
        extras["Rephrase"] = _rephrase_summary(cfg.rephrase.provider, cfg.rephrase.model, c)
    if "qc" in outputs:
        extras["Quality check"] = _qc_table(outputs["qc"]["counts"])
        if outputs["qc"].get("review_html"):
            extras["Quality check"] += f"\n\nReview page (random records per task and split): `{outputs['qc']['review_html']}`"
        if outputs["qc"].get("stats_md") and storage.exists(outputs["qc"]["stats_md"]):
            fs, p = storage.filesystem(outputs["qc"]["stats_md"])
            with fs.open(p, "r", encoding="utf-8") as f:
                extras["Dataset statistics (paper Tables 2, 3, 9)"] = f.read()
    if stages:
        plot_path = storage.join(plot_dir, "loss.png")
        storage.write_bytes_atomic(plot_path, _loss_plot(stages))
        extras["Training"] = (_training_table({**stages, **variants})
                              + f"\n\n![training loss]({_link(cfg.run.run_dir, plot_path)})")
    if "tune" in outputs:
        extras["Learning-rate search (Ray Tune)"] = _tune_table(outputs["tune"])
    results_path = storage.join(eval_dir, "paper_results.json")
    results = storage.read_json(results_path) if storage.exists(results_path) else None
    if results:
        body = render_paper_tables(results)
        fig5 = figure5_plot(results["suites"]["unseen_instructions"]) if "unseen_instructions" in results["suites"] else None
        if fig5:
            fig5_path = storage.join(plot_dir, "figure5.png")
            storage.write_bytes_atomic(fig5_path, fig5)
            body += f"\n![Figure 5: seen vs unseen instructions]({_link(cfg.run.run_dir, fig5_path)})\n"
        fig4 = figure4_plot(results.get("judge", {}).get("pairwise", {}))
        if fig4:
            storage.write_bytes_atomic(storage.join(plot_dir, "figure4.png"), fig4)
        cache = results.get("prediction_cache", {})
        body += f"\nPrediction cache `{cache.get('dir')}`: " + ", ".join(
            f"{m}: {c}" for m, c in cache.items() if m != "dir") + "\n"
        extras["The paper's tables"] = body
    if ablations:
        extras["Ablations (Ray Tune; paper Figures 9, 10 and Table 5's Len)"] = ablation_tables(ablations)
    if metrics:
        extras["Reproduction"] = (
            "One row per claim of the paper, from this run's numbers. " + VERDICT_RULE + "\n\n"
            + reproduction_table(reproduction_rows or reproduction(cfg, metrics, results, ablations)))
    text = render_report(metrics, extras, title=f"Ying run report ({cfg.preset})")
    path = storage.join(cfg.run.run_dir, "report.md")
    storage.write_bytes_atomic(path, text.encode("utf-8"))
    return path
