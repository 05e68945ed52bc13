"""A data dir read for evaluation in bounded memory: only the columns and rows each step needs.

The eval stage never holds a split. Every read goes one Parquet row group at a time:

- ``training_summary``: the majority answer per task and the instructions training used (Figure 5's
  seen/unseen split), from the train split's ``task``, ``instruction`` and ``outputs`` columns. The
  majority keeps 8 bytes per training row (a hash of its answer), never the answers themselves.
- ``select_evaluation_records``: which records to ask, from the evaluation splits' ``id``, ``task``
  (and, for per-image tasks, ``meta``) columns; then the text of just the selected rows, with each
  one's image digests and where its images are (``image_ref``), read row group by row group.
- ``read_images``: the image bytes of given records, by their ``image_ref``; the prediction actors
  call it per batch, so images travel only from storage to the actor that answers them.

A selected record is the record's text columns plus ``image_ref`` ({"file", "row_group", "row"}) and
``image_digests`` (sha256 of each image, hex): enough to key the prediction cache and to fetch the
images later, where they are needed.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping

import pyarrow.parquet as pq

from ying import storage
from ying.data.records import file_urls

__all__ = ["TEXT_COLUMNS", "EVAL_SPLITS", "TrainingSummary", "EvalSelection", "iter_columns",
           "training_summary", "select_evaluation_records", "read_images", "image_key"]

TEXT_COLUMNS = ("id", "task", "category", "lang", "split", "instruction", "inputs", "outputs", "meta")
EVAL_SPLITS = ("test", "validation")  # a task is scored on its test split where it has one, else validation
_READ_THREADS = 4  # row groups read at once when materialising selected rows (each holds one row group)


def _open(url: str):
    fs, path = storage.filesystem(url)
    return fs.open(path, "rb")


def iter_columns(files: Iterable[str], columns: list[str],
                 want: Callable[[Any], list[str] | None] | None = None) -> Iterator[tuple[str, int, Any]]:
    """``(file, row group, pyarrow table of columns)``, one row group at a time.

    ``want(table)``, when given, returns extra columns this row group needs (read then, for this
    row group only), or None to skip it.
    """
    for url in files:
        with _open(url) as fh:
            pf = pq.ParquetFile(fh)
            for rg in range(pf.metadata.num_row_groups):
                table = pf.read_row_group(rg, columns=columns)
                if want is not None:
                    extra = want(table)
                    if extra is None:
                        continue
                    for name in extra:
                        table = table.append_column(name, pf.read_row_group(rg, columns=[name]).column(name))
                yield url, rg, table


# ---------------------------------------------------------------- training split: majority answer, instructions


@dataclass
class TrainingSummary:
    majority: dict[str, str]  # task -> most common training output (ties: alphabetically first)
    global_majority: str  # over every task, for tasks training never saw
    instructions: dict[str, set[str]]  # task -> instructions its training records used
    n_records: int


_ALL = "\x00all"  # the global majority's key among the per-task ones


def _mode(hashes: Any):
    """The sorted distinct values of an int64 array that reach its highest count."""
    import numpy as np

    values, counts = np.unique(hashes, return_counts=True)
    return values[counts == counts.max()]


def training_summary(data_dir: str, split: str = "train") -> TrainingSummary:
    """The majority answers and used instructions of ``split``, in two streaming passes.

    Pass one keeps, per task, the 64-bit hash of every output (8 bytes a row) and the set of
    instructions; the mode of the hashes gives the hashes that reach each task's highest count.
    Pass two finds the texts behind those hashes and keeps the alphabetically first: the same tie
    rule as ``MajorityAnswerBaseline.fit``. Python's ``hash`` is stable within a process, which is
    all two passes in one call need; a collision of two 64-bit hashes is vanishingly unlikely.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    files = file_urls(data_dir, split)
    hashes: dict[str, array] = {}
    instructions: dict[str, set[str]] = {}
    n = 0
    for _, _, table in iter_columns(files, ["task", "instruction", "outputs"]):
        for task, out in zip(table.column("task").to_pylist(), table.column("outputs").to_pylist()):
            hashes.setdefault(task, array("q")).append(hash(out))
        for pair in table.group_by(["task", "instruction"]).aggregate([]).to_pylist():
            instructions.setdefault(pair["task"], set()).add(pair["instruction"])
        n += table.num_rows
    if not n:
        raise ValueError(f"{data_dir}: no {split} records, so there is no majority answer to compare with")
    as_numpy = {task: np.frombuffer(h, dtype=np.int64) for task, h in hashes.items()}
    winners = {task: _mode(h) for task, h in as_numpy.items()}
    winners[_ALL] = _mode(np.concatenate(list(as_numpy.values())))
    del hashes, as_numpy
    best: dict[str, str] = {}
    for _, _, table in iter_columns(files, ["task", "outputs"]):
        outputs = table.column("outputs")
        h = np.fromiter((hash(o) for o in outputs.to_pylist()), dtype=np.int64, count=table.num_rows)
        row_tasks = np.asarray(table.column("task").to_pylist(), dtype=object)
        for key in [*set(row_tasks.tolist()), _ALL]:
            rows = np.arange(len(h)) if key == _ALL else np.flatnonzero(row_tasks == key)
            hits = rows[np.isin(h[rows], winners[key])]
            if len(hits):
                # UTF-8 byte order is code point order: Arrow's min is Python's min.
                text = pc.min(outputs.take(pa.array(hits))).as_py()
                best[key] = text if key not in best else min(best[key], text)
    global_answer = best.pop(_ALL)
    return TrainingSummary(best, global_answer, instructions, n)


# ---------------------------------------------------------------- evaluation splits: which records to ask


def image_key(meta: Mapping[str, Any] | str | None, first_image_digest: str | None = None) -> str:
    """Which image a record shows: COCO's ``cocoid`` / ``image_id`` in meta, else its first image's digest."""
    if isinstance(meta, str) or meta is None:
        meta = json.loads(meta or "{}")
    key = meta.get("cocoid", meta.get("image_id"))
    if key is not None:
        return str(key)
    if first_image_digest is None:
        raise ValueError("image_key: the record's meta names no image id and no image digest was given")
    return first_image_digest


@dataclass
class EvalSelection:
    """What an evaluation reads, per task (records carry text, ``image_ref`` and ``image_digests``)."""

    records: dict[str, list[dict]] = field(default_factory=dict)  # first `limit` records by id
    by_image: dict[str, list[dict]] = field(default_factory=dict)  # every record of the first `limit` images
    splits: dict[str, str] = field(default_factory=dict)  # task -> the split read (test, else validation)


@dataclass
class _Candidates:
    limit: int
    rows: list[tuple[str, str, int, int]] = field(default_factory=list)  # (id, file, row group, row)
    count: int = 0

    def add(self, rid: str, url: str, rg: int, row: int) -> None:
        self.count += 1
        self.rows.append((rid, url, rg, row))
        if len(self.rows) > 2 * self.limit + 1024:  # keep the `limit` smallest ids, amortised
            self.rows = sorted(self.rows)[: self.limit]

    def first(self) -> list[tuple[str, str, int, int]]:
        return sorted(self.rows)[: self.limit]


def _first_image_digests(url: str, rg: int, rows: list[int]) -> dict[int, str]:
    with _open(url) as fh:
        images = pq.ParquetFile(fh).read_row_group(rg, columns=["images"]).column("images")
        return {r: hashlib.sha256(images[r][0].as_py()).hexdigest() for r in rows}


def _image_keys(url: str, rg: int, rows: list[int], metas: list[str]) -> list[str]:
    """Image keys of ``rows`` of a row group; reads its images only for rows whose meta names no image."""
    keys: list[str | None] = []
    missing = []
    for r in rows:
        meta = json.loads(metas[r] or "{}")
        k = meta.get("cocoid", meta.get("image_id"))
        keys.append(None if k is None else str(k))
        if k is None:
            missing.append(r)
    if missing:
        digests = _first_image_digests(url, rg, missing)
        keys = [k if k is not None else digests[r] for k, r in zip(keys, rows)]
    return keys  # type: ignore[return-value]


def select_evaluation_records(data_dir: str, tasks: Iterable[str], limit: int,
                              by_image_tasks: Iterable[str] = ()) -> EvalSelection:
    """Per task, the first ``limit`` records (by id) of its evaluation split; for ``by_image_tasks``
    also every record of the task's first ``limit`` images (ordered by each image's first record id:
    CHAIR asks one caption per image and reads all of an image's captions as ground truth).

    Memory: the ids of ``limit`` rows per task, the first-record id of each image of the per-image
    tasks, and the selected rows; image bytes one row group at a time (to digest them), never kept.
    """
    tasks = list(dict.fromkeys(tasks))
    wanted = set(tasks)
    per_image = set(by_image_tasks) & wanted
    candidates: dict[tuple[str, str], _Candidates] = {}
    first_of_image: dict[tuple[str, str], dict[str, str]] = {}
    files = {split: file_urls(data_dir, split) for split in EVAL_SPLITS}

    def need_meta(table) -> list[str] | None:
        present = set(table.column("task").unique().to_pylist())
        if not present & wanted:
            return None
        return ["meta"] if present & per_image else []

    for split in EVAL_SPLITS:
        for url, rg, table in iter_columns(files[split], ["id", "task"], need_meta):
            ids, row_tasks = table.column("id").to_pylist(), table.column("task").to_pylist()
            image_rows: dict[str, list[int]] = {}
            for row, (rid, task) in enumerate(zip(ids, row_tasks)):
                if task not in wanted:
                    continue
                candidates.setdefault((task, split), _Candidates(limit)).add(rid, url, rg, row)
                if task in per_image:
                    image_rows.setdefault(task, []).append(row)
            if image_rows:
                metas = table.column("meta").to_pylist()
                for task, rows in image_rows.items():
                    firsts = first_of_image.setdefault((task, split), {})
                    for row, key in zip(rows, _image_keys(url, rg, rows, metas)):
                        if key not in firsts or ids[row] < firsts[key]:
                            firsts[key] = ids[row]

    selection = EvalSelection()
    refs: dict[str, list[tuple[str, str, int, int]]] = {}
    image_sets: dict[str, tuple[str, set[str]]] = {}
    for task in tasks:
        split = next((s for s in EVAL_SPLITS if (task, s) in candidates), None)
        if split is None:
            continue
        selection.splits[task] = split
        refs[task] = candidates[(task, split)].first()
        if task in per_image:
            firsts = first_of_image[(task, split)]
            chosen = sorted(firsts, key=lambda k: (firsts[k], k))[:limit]
            image_sets[task] = (split, set(chosen))

    # Every record of the chosen images (their other captions are CHAIR's ground truth).
    by_image_refs: dict[str, list[tuple[str, str, int, int]]] = {t: [] for t in image_sets}
    for task, (split, chosen) in image_sets.items():
        for url, rg, table in iter_columns(files[split], ["id", "task"],
                                           lambda t, task=task: ["meta"] if task in t.column("task").unique().to_pylist() else None):
            row_tasks = table.column("task").to_pylist()
            rows = [r for r, t in enumerate(row_tasks) if t == task]
            ids, metas = table.column("id").to_pylist(), table.column("meta").to_pylist()
            for row, key in zip(rows, _image_keys(url, rg, rows, metas)):
                if key in chosen:
                    by_image_refs[task].append((ids[row], url, rg, row))

    wanted_rows = {(url, rg, row) for rs in [*refs.values(), *by_image_refs.values()] for _, url, rg, row in rs}
    rows = _materialise(sorted(wanted_rows))
    for task, rs in refs.items():
        selection.records[task] = [rows[(url, rg, row)] for _, url, rg, row in rs]
    for task, rs in by_image_refs.items():
        selection.by_image[task] = [rows[(url, rg, row)] for _, url, rg, row in sorted(rs)]
    return selection


def _materialise(refs: list[tuple[str, int, int]]) -> dict[tuple[str, int, int], dict]:
    """Text columns, ``image_ref`` and ``image_digests`` of the given rows, a row group per read."""
    groups: dict[tuple[str, int], list[int]] = {}
    for url, rg, row in refs:
        groups.setdefault((url, rg), []).append(row)

    def read(group: tuple[tuple[str, int], list[int]]) -> list[tuple[tuple[str, int, int], dict]]:
        (url, rg), rows = group
        with _open(url) as fh:
            table = pq.ParquetFile(fh).read_row_group(rg, columns=[*TEXT_COLUMNS, "images"]).take(rows)
        out = []
        for row, rec in zip(rows, table.to_pylist()):
            images = rec.pop("images") or []
            rec["image_digests"] = [hashlib.sha256(img).hexdigest() for img in images]
            rec["image_ref"] = {"file": url, "row_group": rg, "row": row}
            out.append(((url, rg, row), rec))
        return out

    found: dict[tuple[str, int, int], dict] = {}
    with ThreadPoolExecutor(max_workers=_READ_THREADS) as pool:  # I/O and sha256 release the GIL
        for part in pool.map(read, groups.items()):
            found.update(part)
    return found


def read_images(refs: list[Mapping[str, Any]]) -> list[list[bytes]]:
    """The image bytes at each ``image_ref``, in order; one read per (file, row group)."""
    groups: dict[tuple[str, int], list[int]] = {}
    for ref in refs:
        groups.setdefault((ref["file"], int(ref["row_group"])), []).append(int(ref["row"]))
    found: dict[tuple[str, int, int], list[bytes]] = {}
    for (url, rg), rows in groups.items():
        wanted = sorted(set(rows))
        with _open(url) as fh:
            column = pq.ParquetFile(fh).read_row_group(rg, columns=["images"]).column("images").take(wanted)
        for row, images in zip(wanted, column.to_pylist()):
            found[(url, rg, row)] = images or []
    return [found[(ref["file"], int(ref["row_group"]), int(ref["row"]))] for ref in refs]
