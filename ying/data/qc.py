"""Quality check of built records: every record must pass ``schema.validate_record`` and its images
must decode; the held-out policy and the contamination guard then keep evaluation data out of the
train split. Passing records are copied to the QC stage's own directory, the only data training
reads; rejected ones are listed with their reasons in ``<out_dir>/rejects.jsonl`` and the counts
(per split, per task, per reason) in ``<out_dir>/qc_counts.json``.

Counts reconcile: checked = passed + rejected, per split, per task and in total.
"""

from __future__ import annotations

import json

from .. import storage
from .build import _parquet_files, check_image_bytes, records_dir
from .schema import SPLITS, validate_record

__all__ = ["check_record", "check_records", "eval_only_reason", "EVALUATION_SPLITS"]


def check_record(record: dict, max_image_pixels: int = 64_000_000) -> str | None:
    """Why a built record is unusable, or None."""
    problem = validate_record(record)
    if problem:
        return problem
    for k, data in enumerate(record["images"]):
        problem = check_image_bytes(bytes(data), max_image_pixels)
        if problem:
            return f"image {k}: {problem}"
    return None


EVALUATION_SPLITS = ("validation", "test")


def _new_counts() -> dict[str, int]:
    return {"checked": 0, "passed": 0, "rejected": 0, "invalid": 0, "eval_only": 0, "contamination": 0}


def eval_only_reason(task: str) -> str:
    return (f"held out: {task} is evaluation-only (data.eval_only), so its train split is never "
            "trained on; its images count as evaluation images")


def _iter_rows(fs, path: str, columns: list[str] | None = None):
    import pyarrow.parquet as pq

    with fs.open(path, "rb") as fh:
        for batch in pq.ParquetFile(fh).iter_batches(batch_size=256, columns=columns):
            yield from batch.to_pylist()


def check_records(in_dir: str, out_dir: str, max_image_pixels: int = 64_000_000,
                  eval_only: list[str] | tuple[str, ...] = (), block_contamination: bool = True) -> dict:
    """Check every record under ``<in_dir>/records/<split>/``; write the ones that pass to
    ``<out_dir>/records/<split>/`` (same schema) and the rest to ``<out_dir>/rejects.jsonl``.

    Three reasons take a record out, each counted apart:
    - ``invalid``: it fails ``check_record`` (schema, empty output, an image that doesn't decode);
    - ``eval_only``: a train-split record of a task in ``eval_only`` (the paper's Figure 8 keeps
      ViQuAE and Winoground for evaluation only). Such records are set aside rather than moved into
      an evaluation split: a record keeps the split its source gave it, and the eval stage reads
      ``test`` and ``validation`` only;
    - ``contamination``: a train-split record showing an image that a validation or test record
      of any task (or an eval-only task's train record) also shows, by COCO id or by bytes
      (``ying.data.contamination``); the reject says which image and which task/split.

    Evaluation splits are checked first, so the guard knows every evaluation image before it
    looks at training data. Returns ``{"splits": {split: {checked, passed, rejected}}, "checked",
    "passed", "rejected", "tasks": {task: {split: {checked, passed, rejected, invalid, eval_only,
    contamination}}}, "contamination_blocked": {task: n}, "eval_only_removed": {task: n}}``, also
    written to ``<out_dir>/qc_counts.json``. Per split and per task: checked = passed + rejected.
    Streams one Parquet batch at a time, so memory stays bounded on big splits.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .contamination import ContaminationGuard, contamination_reason
    from .schema import RECORD_SCHEMA

    eval_only = set(eval_only)
    guard = ContaminationGuard()
    splits: dict[str, dict[str, int]] = {}
    tasks: dict[str, dict[str, dict[str, int]]] = {}
    rejects: list[dict] = []

    if block_contamination and eval_only:
        # Eval-only tasks' train records are evaluation data too: learn their images first.
        fs, files = _parquet_files(records_dir(in_dir, "train"))
        for f in files:
            for rec in _iter_rows(fs, f, ["task", "split", "images", "meta"]):
                if rec["task"] in eval_only and check_record_images_ok(rec, max_image_pixels):
                    guard.add_evaluation(rec, "train")

    for split in (*EVALUATION_SPLITS, *(s for s in SPLITS if s not in EVALUATION_SPLITS)):
        fs, files = _parquet_files(records_dir(in_dir, split))
        if not files:
            continue
        c = splits.setdefault(split, {"checked": 0, "passed": 0, "rejected": 0})
        out_fs, out_path = storage.filesystem(records_dir(out_dir, split))
        if out_fs.exists(out_path):
            out_fs.rm(out_path, recursive=True)  # a re-run replaces the split, never appends to it
        out_fs.makedirs(out_path, exist_ok=True)
        for n, f in enumerate(files):
            passed = []
            for rec in _iter_rows(fs, f):
                task = rec.get("task") or "?"
                tc = tasks.setdefault(task, {}).setdefault(split, _new_counts())
                c["checked"] += 1
                tc["checked"] += 1
                kind, reason = "invalid", check_record(rec, max_image_pixels)
                if reason is None and split not in EVALUATION_SPLITS:
                    if task in eval_only:
                        kind, reason = "eval_only", eval_only_reason(task)
                    elif block_contamination:
                        hit = guard.find(rec)
                        if hit:
                            kind, reason = "contamination", contamination_reason(*hit)
                if reason:
                    c["rejected"] += 1
                    tc["rejected"] += 1
                    tc[kind] += 1
                    rejects.append({"id": rec.get("id"), "task": rec.get("task"), "split": split,
                                    "source": f, "reason": reason})
                    continue
                c["passed"] += 1
                tc["passed"] += 1
                passed.append(rec)
                if block_contamination and split in EVALUATION_SPLITS:
                    guard.add_evaluation(rec)
            with out_fs.open(f"{out_path}/part-{n:05d}.parquet", "wb") as fh:
                pq.write_table(pa.Table.from_pylist(passed, schema=RECORD_SCHEMA), fh)
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects)
    storage.write_bytes_atomic(storage.join(out_dir, "rejects.jsonl"), lines.encode("utf-8"))
    total = {k: sum(c[k] for c in splits.values()) for k in ("checked", "passed", "rejected")}

    def per_task(kind: str) -> dict[str, int]:
        return {t: n for t in sorted(tasks) if (n := sum(sc[kind] for sc in tasks[t].values()))}

    counts = {"splits": {s: splits[s] for s in SPLITS if s in splits}, **total,
              "tasks": {t: tasks[t] for t in sorted(tasks)},
              "contamination_blocked": per_task("contamination"), "eval_only_removed": per_task("eval_only"),
              "evaluation_images": len(guard)}
    storage.write_bytes_atomic(storage.join(out_dir, "qc_counts.json"),
                               json.dumps(counts, indent=1, sort_keys=True).encode("utf-8"))
    return counts


def check_record_images_ok(record: dict, max_image_pixels: int) -> bool:
    return all(check_image_bytes(bytes(d), max_image_pixels) is None for d in record.get("images") or [])
