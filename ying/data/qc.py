"""Quality check of built records: every record must pass ``schema.validate_record`` and its images
must decode; the held-out policy and the contamination guard then keep evaluation data out of the
train split. Passing records are copied to the QC stage's own directory, the only data training
reads; rejected ones are listed with their reasons in ``<out_dir>/rejects.jsonl``, every training
record the guard flags (dropped or let through) in ``<out_dir>/contamination.jsonl``, and the counts
(per split, per task, per reason) in ``<out_dir>/qc_counts.json``.

The work runs as Ray Data: one actor call per input Parquet file (one CPU each), which streams the
file a batch at a time and writes its passing records to its own output file. Two passes, because
the guard must know every evaluation image before it looks at training data:

1. the evaluation splits (and the train records of evaluation-only tasks): checked and written;
   each worker sends back the 64-bit keys of the images it saw, and the driver folds them into
   one ``ContaminationGuard`` (about 12 bytes per image);
2. the train split, every worker holding that guard.

One decode per image across build and QC: the build decodes every source image fully and writes
each stored image's sha256 into ``meta.image_sha256``. QC hashes the bytes anyway (the guard needs
the digests), and decodes only the images whose digest the build did not vouch for (records
imported from elsewhere, or changed after the build).

Counts reconcile: checked = passed + rejected, per split, per task and in total.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from .. import storage
from . import records
from .build import check_image_bytes
from .contamination import (CONTAMINATION_KINDS, ContaminationGuard, contamination_kind, contamination_reason,
                            identity_key, image_digests, image_identities)
from .schema import SPLITS, validate_record

__all__ = ["check_record", "check_records", "check_file", "eval_only_reason", "write_qc_reports",
           "EVALUATION_SPLITS", "GUARD_MODES"]

EVALUATION_SPLITS = ("validation", "test")
GUARD_MODES = ("drop", "report", "off")
_BATCH_ROWS = 256  # Parquet rows read (and written) at a time per worker: memory stays one batch


def _check(record: dict, max_image_pixels: int, trusted: set[str], digests: list[str] | None) -> tuple[str | None, int]:
    """(why the record is unusable or None, images decoded to find out)."""
    problem = validate_record(record)
    if problem:
        return problem, 0
    decoded = 0
    for k, data in enumerate(record["images"]):
        if digests is not None and digests[k] in trusted:
            continue  # the build decoded these very bytes
        decoded += 1
        problem = check_image_bytes(bytes(data), max_image_pixels)
        if problem:
            return f"image {k}: {problem}", decoded
    return None, decoded


def check_record(record: dict, max_image_pixels: int = 64_000_000, trusted: Iterable[str] = (),
                 digests: list[str] | None = None) -> str | None:
    """Why a built record is unusable, or None. Images whose sha256 is in ``trusted`` (the build
    decoded them) are not decoded again; the others are."""
    trusted = set(trusted)
    if trusted and digests is None:
        digests = image_digests(record)
    return _check(record, max_image_pixels, trusted, digests)[0]


def eval_only_reason(task: str) -> str:
    return (f"held out: {task} is evaluation-only (data.eval_only), so its train split is never "
            "trained on; its images count as evaluation images")


def _build_statement(record: dict) -> list[str]:
    """The digests the build vouched for (``meta.image_sha256``), or none."""
    try:
        meta = json.loads(record.get("meta") or "{}")
    except (TypeError, ValueError):
        return []
    found = meta.get("image_sha256") if isinstance(meta, dict) else None
    return [d for d in found if isinstance(d, str)] if isinstance(found, list) else []


def check_file(path: str, split: str, file_index: int, out_path: str | None, *, max_image_pixels: int,
               eval_only: Iterable[str] = (), guard: ContaminationGuard | None = None, mode: str = "drop",
               allow: Iterable[str] = (), collect_identities: bool = False, only_tasks: Iterable[str] | None = None,
               trust_build: bool = True) -> list[dict[str, Any]]:
    """Check one Parquet file of ``split`` and write its passing records to ``out_path`` (None:
    write nothing). Returns small outcome rows (never images):

    - ``count``: (task, kind, why, n) with kind passed / invalid / eval_only / contamination /
      contamination_kept and ``why`` the contamination kind;
    - ``reject``: a record taken out, with its reason;
    - ``flag``: a training record the guard flagged (``why``; ``kind`` dropped or kept);
    - ``identity``: (key, used_by) per image of a passing record, when ``collect_identities``;
    - ``images``: how many images were decoded and how many the build's statement spared.

    ``only_tasks``: look at these tasks' records only and just collect their identities (the train
    records of evaluation-only tasks, before the train split is checked). A plain function: the
    local QC and the Ray Data workers both call it.
    """
    import pyarrow.parquet as pq

    eval_only, allow = set(eval_only), set(allow)
    only = None if only_tasks is None else set(only_tasks)
    counts: dict[tuple[str, str, str], int] = {}
    rows: list[dict[str, Any]] = []
    images = {"decoded": 0, "spared": 0}

    def count(task: str, kind: str, why: str = "") -> None:
        counts[(task, kind, why)] = counts.get((task, kind, why), 0) + 1

    def outcome(rec: dict, digests: list[str] | None, position: int) -> tuple[str, str, str | None]:
        """(kind, contamination kind, reason or None) for one record; flags go to ``rows``."""
        task = rec.get("task") or "?"
        trusted = set(_build_statement(rec)) if trust_build else set()
        reason, decoded = _check(rec, max_image_pixels, trusted, digests)
        images["decoded"] += decoded
        images["spared"] += sum(1 for d in digests or [] if d in trusted) if reason is None else 0
        if reason is not None:
            return "invalid", "", reason
        if split in EVALUATION_SPLITS:
            return "passed", "", None
        if task in eval_only:
            return "eval_only", "", eval_only_reason(task)
        hit = guard.find(rec, digests) if guard is not None and mode != "off" else None
        if not hit:
            return "passed", "", None
        why = contamination_kind(rec, *hit)
        text = contamination_reason(*hit, why)
        dropped = mode == "drop" and why not in allow
        rows.append({"row": "flag", "id": rec.get("id"), "task": task, "split": split, "source": path,
                     "reason": text, "kind": "dropped" if dropped else "kept", "why": why, "n": position})
        if dropped:
            return "contamination", why, text
        count(task, "contamination_kept", why)
        return "passed", why, None

    fs, p = storage.filesystem(path)
    writer = None
    try:
        with fs.open(p, "rb") as f:
            pf = pq.ParquetFile(f)
            if only is not None and not only & set(pf.read(columns=["task"]).column("task").to_pylist()):
                return [{"row": "images", "split": split, "kind": "decoded", "n": 0, "file": file_index}]
            if out_path is not None:
                writer = records.RecordFile(out_path)
            columns = None if only is None else ["task", "split", "images", "meta"]
            position = 0
            for batch in pf.iter_batches(batch_size=_BATCH_ROWS, columns=columns):
                passed = []
                for rec in batch.to_pylist():
                    position += 1
                    task = rec.get("task") or "?"
                    if only is not None:  # identities only, of the eval-only tasks' records
                        if task in only:
                            rows.extend({"row": "identity", "key": identity_key(i), "used_by": f"{task}/{split}"}
                                        for i in image_identities(rec))
                        continue
                    try:
                        digests = image_digests(rec)
                    except TypeError:  # images that aren't bytes: validate_record names the problem
                        digests = None
                    kind, why, reason = outcome(rec, digests, position)
                    count(task, kind, why)
                    if reason:
                        rows.append({"row": "reject", "id": rec.get("id"), "task": rec.get("task"), "split": split,
                                     "source": path, "reason": reason, "kind": kind, "why": why, "n": position})
                        continue
                    passed.append(rec)
                    if collect_identities:
                        rows.extend({"row": "identity", "key": identity_key(i), "used_by": f"{task}/{split}"}
                                    for i in image_identities(rec, digests))
                if writer is not None and passed:
                    writer.write(passed)
    finally:
        if writer is not None:
            writer.close()  # an empty file still has the schema: a split with no passing record reads as empty
    rows += [{"row": "count", "task": t, "split": split, "kind": k, "why": w, "n": n} for (t, k, w), n in counts.items()]
    rows += [{"row": "images", "split": split, "kind": k, "n": n} for k, n in images.items()]
    for r in rows:
        r["file"] = file_index
    return rows


_OUT_FIELDS = [("row", "string"), ("task", "string"), ("split", "string"), ("id", "string"), ("source", "string"),
               ("reason", "string"), ("kind", "string"), ("why", "string"), ("n", "int64"), ("key", "uint64"),
               ("used_by", "string"), ("file", "int64")]


def _out_schema():
    import pyarrow as pa

    return pa.schema([(name, getattr(pa, kind)()) for name, kind in _OUT_FIELDS])


class _QcWorker:
    """Ray Data actor: checks whole input files (one row of the input = one file). The guard comes
    once per actor, through the object store."""

    def __init__(self, guard_ref: list | None = None):
        import ray

        self.guard = ray.get(guard_ref[0]) if guard_ref else None

    def __call__(self, batch, **kwargs):
        import pyarrow as pa

        rows: list[dict] = []
        for job in batch.to_pylist():
            rows += _check_job(job, self.guard, kwargs)
        return pa.Table.from_pylist(rows, schema=_out_schema())


def _check_job(job: dict, guard: ContaminationGuard | None, kwargs: dict) -> list[dict]:
    """A job: {path, split, index, out ("" = write nothing), only (JSON list of tasks, or "")}."""
    only = json.loads(job["only"]) if job.get("only") else None
    return check_file(job["path"], job["split"], job["index"], job["out"] or None, guard=guard, only_tasks=only,
                      **kwargs)


def _run_files(jobs: list[dict], kwargs: dict, guard: ContaminationGuard | None, use_ray: bool, workers: int | None,
               progress) -> Iterable[dict]:
    """Outcome rows of ``check_file`` over ``jobs`` ({path, split, index, out}), as Ray Data actor
    calls (one CPU each) or, without Ray, one after another in this process."""
    if not jobs:
        return
    if not use_ray:
        for job in jobs:
            rows = _check_job(job, guard, kwargs)
            progress(rows)
            yield from rows
        return
    import ray

    n_cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    size = max(1, min(workers or n_cpus, len(jobs)))
    ds = ray.data.from_items(jobs, override_num_blocks=len(jobs)).map_batches(
        _QcWorker,
        batch_size=1,  # one file per call: its output file is written by that call alone
        batch_format="pyarrow",
        num_cpus=1,  # decoding and hashing are CPU work: they run here, never in the 0-CPU stage task
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=size, initial_size=size,
                                           max_tasks_in_flight_per_actor=2),
        fn_constructor_kwargs={"guard_ref": [ray.put(guard)] if guard is not None else None},
        fn_kwargs=kwargs,
    )
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        rows = batch.to_pylist()
        progress(rows)
        yield from rows


def check_records(in_dir: str, out_dir: str, max_image_pixels: int = 64_000_000,
                  eval_only: list[str] | tuple[str, ...] = (), guard_mode: str = "drop",
                  allow: list[str] | tuple[str, ...] = (), *, use_ray: bool | None = None, workers: int | None = None,
                  trust_build: bool = True, progress_interval_s: float = 10.0) -> dict:
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
      (``ying.data.contamination``); the reject says which image, which task/split and why
      (``CONTAMINATION_KINDS``).

    ``guard_mode``: "drop" (default) takes contaminated records out except those whose kind is in
    ``allow``; "report" keeps them all and only lists them; "off" does not look.

    ``use_ray``: Ray Data workers (default when Ray is initialized) or this process alone.
    ``trust_build``: skip decoding images the build vouched for (``meta.image_sha256``).

    Returns ``{"splits": {split: {checked, passed, rejected}}, "checked", "passed", "rejected",
    "tasks": {task: {split: {checked, passed, rejected, invalid, eval_only, contamination,
    contamination_kept}}}, "contamination_blocked": {task: n}, "eval_only_removed": {task: n},
    "contamination_by_kind": {kind: {dropped, kept}}, "contamination_guard", "evaluation_images",
    "images_decoded", "images_spared"}``, also written to ``<out_dir>/qc_counts.json``.
    Per split and per task: checked = passed + rejected.
    """
    if guard_mode not in GUARD_MODES:
        raise ValueError(f"contamination guard mode {guard_mode!r}: use one of {list(GUARD_MODES)}")
    unknown = sorted(set(allow) - set(CONTAMINATION_KINDS))
    if unknown:
        raise ValueError(f"contamination kinds {unknown} are unknown; known kinds: {list(CONTAMINATION_KINDS)}")
    if use_ray is None:
        import ray

        use_ray = ray.is_initialized()
    from ..progress import ProgressLine

    eval_only = sorted(set(eval_only))
    files = {split: records.file_urls(in_dir, split) for split in SPLITS}  # workers open each file by URL
    records.clear_records(out_dir)  # a re-run replaces the splits, never appends to them

    def jobs_for(splits) -> list[dict]:
        return [{"path": f, "split": s, "index": n, "only": "",
                 "out": storage.join(records.split_dir(out_dir, s), f"part-{n:05d}.parquet")}
                for s in splits for n, f in enumerate(files[s])]

    total = sum(records.count_records(in_dir, split) for split in SPLITS)
    line = ProgressLine("qc", total=total, unit="records", interval_s=progress_interval_s)

    def progress(rows: list[dict]) -> None:
        line.update(sum(r["n"] for r in rows if r["row"] == "count" and r["kind"] != "contamination_kept"))

    kwargs = {"max_image_pixels": max_image_pixels, "eval_only": eval_only, "mode": guard_mode, "allow": list(allow),
              "trust_build": trust_build}
    guard = ContaminationGuard() if guard_mode != "off" else None
    outcomes: list[dict] = []

    def keep(rows: Iterable[dict]) -> None:
        for r in rows:
            if r["row"] == "identity":
                guard.add_keys([r["key"]], r["used_by"])
            else:
                outcomes.append(r)

    # Pass 1: evaluation splits, plus (for the guard) the identities of eval-only tasks' train records.
    first = jobs_for(EVALUATION_SPLITS)
    if guard is not None and eval_only:
        first += [{**job, "out": "", "only": json.dumps(eval_only)} for job in jobs_for(["train"])]
    keep(_run_files(first, {**kwargs, "collect_identities": guard is not None}, None, use_ray, workers, progress))
    # Pass 2: the training data, against every evaluation image.
    keep(_run_files(jobs_for([s for s in SPLITS if s not in EVALUATION_SPLITS]), kwargs, guard, use_ray, workers,
                    progress))
    line.finish()
    return _finish(out_dir, outcomes, guard, guard_mode)


def _finish(out_dir: str, outcomes: list[dict], guard: ContaminationGuard | None, guard_mode: str) -> dict:
    """Fold the workers' rows into the counts; write rejects.jsonl, contamination.jsonl and
    qc_counts.json (rows in split, file and record order, whatever order the workers ended in)."""
    split_rank = {s: i for i, s in enumerate((*EVALUATION_SPLITS, *(s for s in SPLITS if s not in EVALUATION_SPLITS)))}
    splits: dict[str, dict[str, int]] = {}
    tasks: dict[str, dict[str, dict[str, int]]] = {}
    by_kind: dict[str, dict[str, int]] = {}
    images = {"decoded": 0, "spared": 0}
    rejects, flags = [], []
    for r in outcomes:
        if r["row"] == "images":
            images[r["kind"]] += r["n"]
        elif r["row"] == "reject":
            rejects.append(r)
        elif r["row"] == "flag":
            flags.append(r)
            by_kind.setdefault(r["why"], {"dropped": 0, "kept": 0})[r["kind"]] += 1
        elif r["row"] == "count":
            tc = tasks.setdefault(r["task"], {}).setdefault(r["split"], {
                "checked": 0, "passed": 0, "rejected": 0, "invalid": 0, "eval_only": 0, "contamination": 0,
                "contamination_kept": 0})
            tc[r["kind"]] += r["n"]
            if r["kind"] == "contamination_kept":
                continue  # already counted as passed
            c = splits.setdefault(r["split"], {"checked": 0, "passed": 0, "rejected": 0})
            tc["checked"] += r["n"]
            c["checked"] += r["n"]
            if r["kind"] == "passed":
                c["passed"] += r["n"]
            else:
                tc["rejected"] += r["n"]
                c["rejected"] += r["n"]
    order = lambda r: (split_rank.get(r["split"], 9), r["file"], r["n"])  # noqa: E731
    lines = "".join(json.dumps({k: r[k] for k in ("id", "task", "split", "source", "reason")}, ensure_ascii=False) + "\n"
                    for r in sorted(rejects, key=order))
    storage.write_bytes_atomic(storage.join(out_dir, "rejects.jsonl"), lines.encode("utf-8"))
    lines = "".join(json.dumps({"id": r["id"], "task": r["task"], "split": r["split"], "kind": r["why"],
                                "action": r["kind"], "reason": r["reason"]}, ensure_ascii=False) + "\n"
                    for r in sorted(flags, key=order))
    storage.write_bytes_atomic(storage.join(out_dir, "contamination.jsonl"), lines.encode("utf-8"))
    total = {k: sum(c[k] for c in splits.values()) for k in ("checked", "passed", "rejected")}

    def per_task(kind: str) -> dict[str, int]:
        return {t: n for t in sorted(tasks) if (n := sum(sc[kind] for sc in tasks[t].values()))}

    counts = {"splits": {s: splits[s] for s in SPLITS if s in splits}, **total,
              "tasks": {t: {s: tasks[t][s] for s in SPLITS if s in tasks[t]} for t in sorted(tasks)},
              "contamination_guard": guard_mode,
              "contamination_blocked": per_task("contamination"), "eval_only_removed": per_task("eval_only"),
              "contamination_by_kind": {k: by_kind[k] for k in CONTAMINATION_KINDS if k in by_kind},
              "evaluation_images": len(guard) if guard is not None else 0,
              "images_decoded": images["decoded"], "images_spared": images["spared"]}
    bad = {f"{t}/{s}": c for t, sc in tasks.items() for s, c in sc.items() if c["checked"] != c["passed"] + c["rejected"]}
    if bad:
        raise RuntimeError(f"QC counts don't reconcile (checked != passed + rejected): {bad}")
    storage.write_bytes_atomic(storage.join(out_dir, "qc_counts.json"),
                               json.dumps(counts, indent=1, sort_keys=True).encode("utf-8"))
    return counts


def _reports(data_dir: str, review_path: str, seed: int, per_split: int, real_release_tasks: list[str] | None) -> dict:
    from .review import write_review_page
    from .stats import write_stats

    stats = write_stats(data_dir, data_dir, real_release_tasks=real_release_tasks)
    review = write_review_page(data_dir, review_path, per_split=per_split, seed=seed)
    return {"stats_json": stats["stats_json"], "stats_md": stats["stats_md"], "review_html": review["path"]}


def write_qc_reports(data_dir: str, review_path: str, seed: int = 0, per_split: int = 20,
                     real_release_tasks: list[str] | None = None) -> dict:
    """The paper's Stage III reports of a checked dataset: statistics (Tables 2, 3, 9; Table 9
    beside the paper's counts for ``real_release_tasks``) and the review pages. Thumbnails and the
    instruction statistics are CPU work, so with Ray up they run in a one-CPU Ray task rather than
    in the caller (a 0-CPU stage task). Returns ``{stats_json, stats_md, review_html}``."""
    import ray

    args = (data_dir, review_path, seed, per_split, real_release_tasks)
    if not ray.is_initialized():
        return _reports(*args)
    return ray.get(ray.remote(num_cpus=1)(_reports).remote(*args))
