"""Dataset statistics: the paper's Table 2 (instructions) and Tables 3 and 9 (instances).

Table 2 is computed from the instruction pools (``instructions/<task>.json``), grouped by each
task's category in the adapter registry:

- number of instructions per category (and in total);
- tokens per instruction, mean ± sd. English instructions are split on whitespace (the paper's
  "24.4 tokens" reads as words); Chinese ones are cut into words with jieba. Tokens that are only
  punctuation or whitespace are not counted in either language, so the two are comparable;
- instruction edit distance within a task (every pair of the same task's instructions) and across
  tasks (every pair from two different tasks), mean ± sd of the character-level Levenshtein
  distance (rapidfuzz), the paper's "average edit distance".

Tables 3 and 9 count a built dataset directory (``records/<split>/*.parquet``) by task, category
and split, reading only the ``task`` column, so image bytes are never loaded. For the tasks a run
built from the real releases (``data.sources``; recorded in ``<dir>/releases.json``), the counts
stand beside the paper's Table 9 (``PAPER_TABLE9``); mini-world tasks are never compared.
"""

from __future__ import annotations

import json
import logging
import statistics
import unicodedata
from pathlib import Path
from typing import Any

from .. import storage
from . import records
from .instructions import POOL_DIR
from .schema import CATEGORIES, SPLITS

__all__ = [
    "PAPER_TABLE9",
    "table9_comparison",
    "TOKENIZER_NOTE",
    "count_instruction_tokens",
    "instruction_stats",
    "instance_stats",
    "dataset_stats",
    "stats_markdown",
    "write_stats",
]

TOKENIZER_NOTE = (
    "tokens: English split on whitespace, Chinese cut into words by jieba; punctuation-only tokens "
    "are not counted. Edit distance: character-level Levenshtein (rapidfuzz)."
)
UNREGISTERED = "(unregistered)"  # category of a task key the adapter registry does not know
RELEASES_FILE = "releases.json"  # {"real": [tasks built from real releases]}: what Table 9 may be compared with

# The paper's Table 9 (Appendix B): instances per task, (train, validation, test). Every category's
# sums were checked against Table 3; two differ in the paper itself (reasoning test 10,800 here vs
# 10,000 there, Chinese validation 78,206 vs 77,306). The extracted table lost a 0 in the
# classification and VQA test columns; Table 3's sums place the zeros (COCO-GOI, COCO-Text and
# ImageNet test 0; OCR-VQA and GQA test 0).
PAPER_TABLE9: dict[str, tuple[int, int, int]] = {
    "coco": (566_747, 25_010, 25_010),
    "textcap": (97_765, 13_965, 0),
    "image-paragraph-captioning": (14_575, 2_487, 2_489),
    "coco-goi": (30_000, 2_000, 0),
    "coco-text": (118_312, 27_550, 0),
    "imagenet": (30_000, 50_000, 0),
    "coco-itm": (30_000, 5_000, 5_000),
    "snli-ve": (20_000, 14_339, 14_740),
    "mocheg": (4_991, 180, 466),
    "iqa": (5_000, 1_000, 1_000),
    "vqa-v2": (30_000, 30_000, 0),
    "shapes": (13_568, 1_024, 1_024),
    "docvqa": (39_463, 5_349, 0),
    "ocr-vqa": (11_414, 4_940, 0),
    "st-vqa": (26_074, 0, 4_070),
    "text-vqa": (27_113, 0, 5_734),
    "gqa": (30_001, 5_001, 0),
    "okvqa": (9_009, 5_046, 0),
    "a-okvqa": (17_056, 1_145, 0),
    "science-qa": (12_726, 4_241, 4_241),
    "viquae": (1_190, 1_250, 1_236),
    "clevr": (30_000, 2_000, 0),
    "nlvr": (29_372, 2_000, 0),
    "vcr": (25_000, 5_000, 5_000),
    "visual-mrc": (15_000, 2_500, 5_000),
    "winoground": (0, 0, 800),
    "vist": (5_000, 4_315, 4_350),
    "visual-dialog": (50_000, 1_000, 1_000),
    "multi30k": (90_000, 6_000, 12_000),
    "fm-iqa": (164_735, 75_206, 0),
    "coco-cn": (18_341, 1_000, 1_000),
    "flickr8k-cn": (6_000, 1_000, 1_000),
    "chinese-food": (0, 0, 1_100),
    "mmchat": (3_000, 1_000, 1_000),
    "ss": (2_000, 2_000, 2_000),
    "ivqa": (5_994, 2_000, 2_000),
    "msvd-qa": (1_161, 245, 504),
    "activitynet-qa": (3_200, 1_800, 800),
    "msrvtt-qa": (6_513, 497, 2_990),
    "msrvtt": (2_000, 1_000, 1_000),
}


def _is_punctuation(token: str) -> bool:
    return all(unicodedata.category(ch).startswith("P") or ch.isspace() for ch in token)


def count_instruction_tokens(text: str, lang: str) -> int:
    """Tokens of one instruction, per TOKENIZER_NOTE."""
    if lang == "zh":
        import jieba

        jieba.setLogLevel(logging.WARNING)  # jieba logs its dictionary load at INFO on first use
        tokens = jieba.lcut(text)
    else:
        tokens = text.split()
    return sum(1 for t in tokens if t.strip() and not _is_punctuation(t))


def _mean_sd(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "sd": 0.0, "n": 0}
    sd = statistics.pstdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "sd": sd, "n": len(values)}


def _load_pools(pool_dir: Path) -> dict[str, list[str]]:
    pools: dict[str, list[str]] = {}
    for path in sorted(Path(pool_dir).glob("*.json")):
        pool = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(pool, list) or not all(isinstance(s, str) for s in pool):
            raise ValueError(f"{path}: an instruction pool must be a JSON list of strings")
        pools[path.stem] = pool
    if not pools:
        raise FileNotFoundError(f"no instruction pools (*.json) in {pool_dir}")
    return pools


def _task_spec(task: str):
    from .tasks import TASKS

    module = TASKS.get(task)
    return None if module is None else module.SPEC


def instruction_stats(pool_dir: str | Path = POOL_DIR) -> dict[str, Any]:
    """Table 2 from the instruction pools in ``pool_dir`` (one ``<task>.json`` list per task)."""
    import numpy as np
    from rapidfuzz.distance import Levenshtein
    from rapidfuzz.process import cdist

    pools = _load_pools(Path(pool_dir))
    texts: list[str] = []
    owner: list[int] = []
    per_category: dict[str, int] = {}
    per_task: dict[str, dict[str, Any]] = {}
    token_counts: list[int] = []
    for t_index, (task, pool) in enumerate(sorted(pools.items())):
        spec = _task_spec(task)
        category = spec.category if spec else UNREGISTERED
        lang = spec.lang if spec else "en"
        counts = [count_instruction_tokens(s, lang) for s in pool]
        token_counts.extend(counts)
        per_category[category] = per_category.get(category, 0) + len(pool)
        per_task[task] = {"category": category, "lang": lang, "instructions": len(pool),
                          "tokens": _mean_sd(counts)}
        texts.extend(pool)
        owner.extend([t_index] * len(pool))

    # One (n x n) distance matrix; pairs are its upper triangle, split by same/different task.
    dist = cdist(texts, texts, scorer=Levenshtein.distance, dtype=np.int32)
    owner_arr = np.asarray(owner)
    upper = np.triu(np.ones(dist.shape, dtype=bool), k=1)
    same = owner_arr[:, None] == owner_arr[None, :]
    within = dist[upper & same].astype(float)
    across = dist[upper & ~same].astype(float)
    for t_index, task in enumerate(sorted(pools)):
        idx = np.flatnonzero(owner_arr == t_index)
        sub = dist[np.ix_(idx, idx)][np.triu(np.ones((len(idx), len(idx)), dtype=bool), k=1)]
        per_task[task]["edit_distance_within"] = _mean_sd(sub.astype(float).tolist())

    def array_stats(a) -> dict[str, float]:
        return {"mean": float(a.mean()) if a.size else 0.0, "sd": float(a.std()) if a.size else 0.0,
                "n": int(a.size)}

    ordered = {c: per_category[c] for c in CATEGORIES if c in per_category}
    ordered.update({c: n for c, n in per_category.items() if c not in ordered})
    return {
        "tasks": len(pools),
        "instructions": len(texts),
        "instructions_per_category": ordered,
        "tokens_per_instruction": _mean_sd([float(c) for c in token_counts]),
        "edit_distance_within_task": array_stats(within),
        "edit_distance_across_tasks": array_stats(across),
        "per_task": per_task,
        "method": TOKENIZER_NOTE,
    }


def instance_stats(data_dir: str) -> dict[str, Any]:
    """Tables 3 and 9: record counts by task, by category and in total, per split."""
    by_task: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        for task, n in records.task_counts(data_dir, split).items():
            by_task.setdefault(task, {s: 0 for s in SPLITS})[split] += n
    by_category: dict[str, dict[str, int]] = {}
    task_category: dict[str, str] = {}
    for task, row in by_task.items():
        spec = _task_spec(task)
        category = spec.category if spec else UNREGISTERED
        task_category[task] = category
        cat_row = by_category.setdefault(category, {s: 0 for s in SPLITS})
        for s in SPLITS:
            cat_row[s] += row[s]
    total = {s: sum(r[s] for r in by_task.values()) for s in SPLITS}
    order = {c: i for i, c in enumerate(CATEGORIES)}
    return {
        "by_task": {t: {"category": task_category[t], **by_task[t], "total": sum(by_task[t].values())}
                    for t in sorted(by_task, key=lambda t: (order.get(task_category[t], 99), t))},
        "by_category": {c: {**by_category[c], "total": sum(by_category[c].values())}
                        for c in sorted(by_category, key=lambda c: order.get(c, 99))},
        "total": {**total, "total": sum(total.values())},
    }


def table9_comparison(instances: dict[str, Any], real_release_tasks: list[str]) -> dict[str, Any]:
    """``{task: {split: {"run": n, "paper": m}}}`` for the tasks built from real releases (in
    ``PAPER_TABLE9``), from ``instance_stats``' counts."""
    out: dict[str, Any] = {}
    for task in real_release_tasks:
        if task not in PAPER_TABLE9:
            continue
        row = instances["by_task"].get(task, {})
        out[task] = {s: {"run": row.get(s, 0), "paper": PAPER_TABLE9[task][i]} for i, s in enumerate(SPLITS)}
    return out


def read_releases(data_dir: str) -> list[str] | None:
    """The tasks a dataset dir was built from real releases, as ``write_stats`` recorded them."""
    path = storage.join(data_dir, RELEASES_FILE)
    if not storage.exists(path):
        return None
    fs, p = storage.filesystem(path)
    with fs.open(p, "r", encoding="utf-8") as f:
        return list(json.load(f).get("real", []))


def dataset_stats(data_dir: str, pool_dir: str | Path = POOL_DIR,
                  real_release_tasks: list[str] | None = None) -> dict[str, Any]:
    """Tables 2, 3 and 9; ``real_release_tasks`` (default: ``<data_dir>/releases.json``, else none)
    are compared with the paper's Table 9."""
    if real_release_tasks is None:
        real_release_tasks = read_releases(data_dir) or []
    instances = instance_stats(data_dir)
    return {"data_dir": str(data_dir), "instructions": instruction_stats(pool_dir), "instances": instances,
            "real_release_tasks": list(real_release_tasks),
            "paper_table9": table9_comparison(instances, list(real_release_tasks))}


def _pm(s: dict[str, float]) -> str:
    return f"{s['mean']:.1f} ± {s['sd']:.1f}"


def stats_markdown(stats: dict[str, Any]) -> str:
    """The three tables as one Markdown section (headings at level 3, for embedding in a report)."""
    ins = stats["instructions"]
    lines = ["### Instructions (paper Table 2)", "", "| statistic | value |", "|---|---:|"]
    for category, n in ins["instructions_per_category"].items():
        lines.append(f"| instructions: {category} | {n} |")
    lines += [
        f"| instructions: total ({ins['tasks']} tasks) | {ins['instructions']} |",
        f"| tokens per instruction | {_pm(ins['tokens_per_instruction'])} |",
        f"| instruction edit distance within a task ({ins['edit_distance_within_task']['n']} pairs) | "
        f"{_pm(ins['edit_distance_within_task'])} |",
        f"| instruction edit distance across tasks ({ins['edit_distance_across_tasks']['n']} pairs) | "
        f"{_pm(ins['edit_distance_across_tasks'])} |",
        "",
        f"_{ins['method']}_",
        "",
    ]
    inst = stats["instances"]
    lines += ["### Instances by category and split (paper Table 3)", "",
              "| category | train | validation | test | total |", "|---|---:|---:|---:|---:|"]
    for category, row in inst["by_category"].items():
        lines.append(f"| {category} | {row['train']:,} | {row['validation']:,} | {row['test']:,} | {row['total']:,} |")
    t = inst["total"]
    lines.append(f"| **total** | {t['train']:,} | {t['validation']:,} | {t['test']:,} | {t['total']:,} |")
    lines += ["", "### Instances by task and split (paper Table 9)", "",
              "| category | task | train | validation | test | total |", "|---|---|---:|---:|---:|---:|"]
    for task, row in inst["by_task"].items():
        lines.append(f"| {row['category']} | {task} | {row['train']:,} | {row['validation']:,} | "
                     f"{row['test']:,} | {row['total']:,} |")
    if not inst["by_task"]:
        lines.append(f"| | (no records under {stats['data_dir']}/records) | 0 | 0 | 0 | 0 |")
    lines += ["", "### Tasks built from the real releases, beside the paper's Table 9", ""]
    compared = stats.get("paper_table9") or {}
    if compared:
        lines += ["Run / paper instances per split; the paper sampled subsets of most releases "
                  "(Appendix A.4), as `data.max_per_split` does.", "",
                  "| task | train (run / paper) | validation (run / paper) | test (run / paper) |",
                  "|---|---:|---:|---:|"]
        for task, by_split in compared.items():
            cells = [f"{c['run']:,} / {c['paper']:,}" for c in (by_split[s] for s in SPLITS)]
            lines.append(f"| {task} | " + " | ".join(cells) + " |")
    else:
        lines.append("No task of this dataset was built from a real release (the mini-world's counts are "
                     "not comparable with the paper's), so there is nothing to set beside Table 9.")
    return "\n".join(lines) + "\n"


def write_stats(data_dir: str, out_dir: str, pool_dir: str | Path = POOL_DIR,
                real_release_tasks: list[str] | None = None) -> dict[str, Any]:
    """Compute the statistics and write ``<out_dir>/stats.json`` and ``<out_dir>/stats.md``.
    ``real_release_tasks`` given: also recorded in ``<out_dir>/releases.json``, so a later
    ``ying stats`` of the same dir compares the same tasks with Table 9.

    Returns ``{"stats": ..., "markdown": ..., "stats_json": path, "stats_md": path}``.
    """
    if real_release_tasks is not None:
        storage.write_json_atomic(storage.join(out_dir, RELEASES_FILE), {"real": list(real_release_tasks)})
    stats = dataset_stats(data_dir, pool_dir, real_release_tasks)
    markdown = stats_markdown(stats)
    json_path = storage.join(out_dir, "stats.json")
    md_path = storage.join(out_dir, "stats.md")
    storage.write_json_atomic(json_path, stats)
    storage.write_bytes_atomic(md_path, markdown.encode("utf-8"))
    return {"stats": stats, "markdown": markdown, "stats_json": json_path, "stats_md": md_path}
