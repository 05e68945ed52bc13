"""Quality check of built records: every record must pass ``schema.validate_record`` and its images
must decode. Passing records are copied to the QC stage's own directory, the only data training reads;
rejected ones are listed with their reasons in ``<out_dir>/rejects.jsonl``.

Counts reconcile: checked = passed + rejected, per split and in total.
"""

from __future__ import annotations

import json

from .. import storage
from .build import _parquet_files, check_image_bytes, records_dir
from .schema import SPLITS, validate_record

__all__ = ["check_record", "check_records"]


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


def check_records(in_dir: str, out_dir: str, max_image_pixels: int = 64_000_000) -> dict:
    """Check every record under ``<in_dir>/records/<split>/``; write the ones that pass to
    ``<out_dir>/records/<split>/`` (same schema) and the rest to ``<out_dir>/rejects.jsonl``.

    Returns ``{"splits": {split: {checked, passed, rejected}}, "checked", "passed", "rejected"}``.
    Streams one Parquet batch at a time, so memory stays bounded on big splits.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .schema import RECORD_SCHEMA

    splits: dict[str, dict[str, int]] = {}
    rejects: list[dict] = []
    for split in SPLITS:
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
            with fs.open(f, "rb") as fh:
                for batch in pq.ParquetFile(fh).iter_batches(batch_size=256):
                    for rec in batch.to_pylist():
                        c["checked"] += 1
                        reason = check_record(rec, max_image_pixels)
                        if reason:
                            c["rejected"] += 1
                            rejects.append({"id": rec.get("id"), "task": rec.get("task"), "split": split,
                                            "source": f, "reason": reason})
                        else:
                            c["passed"] += 1
                            passed.append(rec)
            with out_fs.open(f"{out_path}/part-{n:05d}.parquet", "wb") as fh:
                pq.write_table(pa.Table.from_pylist(passed, schema=RECORD_SCHEMA), fh)
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects)
    storage.write_bytes_atomic(storage.join(out_dir, "rejects.jsonl"), lines.encode("utf-8"))
    total = {k: sum(c[k] for c in splits.values()) for k in ("checked", "passed", "rejected")}
    return {"splits": splits, **total}
