"""A stage's training and validation records as Ray Datasets, handed to the TorchTrainer.

The driver builds the datasets; Ray Data reads and encodes them on CPU workers (on a cluster, the
CPU worker type); each training worker only collates and trains:

    stage_files      files holding the stage's tasks, from Parquet footers (row-group statistics of
                     the ``task`` column): Stage I never opens a VQA file
    select_ids       seeded choices from text columns only (no image bytes): the validation sample,
                     stratified across the stage's tasks, and per-task caps for the ablations
    stage_datasets   the stage's files, one block each, in a seeded order -> map_batches(encode_files)
                     as Ray tasks (not an actor pool: each epoch is a new execution of the dataset,
                     which would start its actors again, while tasks land on warm worker processes)
    EncodeRecords    reads a file's rows of the stage (row groups of other tasks skipped from their
                     statistics; image columns read only where a wanted row is), then decodes and
                     resizes images (uint8), tokenizes and masks labels; the record policy of an
                     ablation (instructions from the first k of each pool; raw instead of rephrased
                     answers) is applied here
    epoch_batches    a worker's micro-batches of one epoch (local shuffle seeded by epoch, prefetch),
                     skipping the batches a restored checkpoint already trained on

Ray Train splits each dataset across workers with ``streaming_split(equal=True)``: every record is
read once per epoch across all workers, and every rank gets the same number of rows, so the same
number of batches (ZeRO-3 hangs on an uneven count).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from ying import storage

__all__ = [
    "RecordPolicy",
    "stage_files",
    "select_ids",
    "stage_datasets",
    "EncodeRecords",
    "encode_files",
    "read_stage_rows",
    "epoch_batches",
    "data_identity",
    "TRAIN_COLUMNS",
]

TRAIN_COLUMNS = ["id", "task", "images", "instruction", "inputs", "outputs"]


@dataclass(frozen=True)
class RecordPolicy:
    """How a stage's training records are shown to the model (the ablations change these).

    ``instructions_per_task``: each record's instruction is redrawn (by seed and record id) from
    the first k instructions of its task's pool (paper Figure 9); None keeps the built instruction.
    ``answers``: "outputs" trains on the records' outputs (rephrased where the task rephrases);
    "original" on ``meta.original_answer``, the source's short answer (Table 5's "Len" column).
    ``max_per_task``: at most this many training records per task, chosen by seed (paper
    Appendix I: 5k per task in the task-count study); None: all.
    """

    instructions_per_task: int | None = None
    answers: str = "outputs"
    max_per_task: int | None = None

    def columns(self) -> list[str]:
        return TRAIN_COLUMNS + (["meta"] if self.answers == "original" else [])


def _split_dir(data_dir: str, split: str) -> str:
    return storage.join(data_dir, "records", split)


def stage_files(data_dir: str, split: str, tasks: list[str]) -> tuple[Any, list[str]]:
    """(fsspec filesystem, files) of ``split`` that may hold rows of ``tasks``.

    Footers only: a file is kept when a row group's ``task`` statistics overlap the stage's tasks
    (or a row group has no statistics). Writers that keep a task per row group make this exact.
    """
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(_split_dir(data_dir, split))
    if not fs.exists(path):
        return fs, []
    wanted = sorted(set(tasks))
    keep = []
    for f in sorted(p for p in fs.find(path) if p.endswith(".parquet")):
        with fs.open(f, "rb") as fh:
            meta = pq.ParquetFile(fh).metadata
        column = meta.schema.names.index("task") if "task" in meta.schema.names else None
        for i in range(meta.num_row_groups):
            stats = meta.row_group(i).column(column).statistics if column is not None else None
            if stats is None or not stats.has_min_max or any(stats.min <= t <= stats.max for t in wanted):
                keep.append(f)
                break
    return fs, keep


def _rank_key(seed: int, record_id: str) -> bytes:
    return hashlib.sha256(f"{seed}\x00{record_id}".encode("utf-8")).digest()


def select_ids(data_dir: str, split: str, tasks: list[str], per_task: int, seed: int) -> dict[str, list[str]]:
    """Up to ``per_task`` record ids per task, chosen by a seeded hash; reads the id and task columns only."""
    import pyarrow.parquet as pq

    fs, files = stage_files(data_dir, split, tasks)
    wanted = set(tasks)
    ranked: dict[str, list[tuple[bytes, str]]] = {t: [] for t in tasks}
    for f in files:
        with fs.open(f, "rb") as fh:
            table = pq.read_table(fh, columns=["id", "task"])
        for record_id, task in zip(table.column("id").to_pylist(), table.column("task").to_pylist()):
            if task in wanted:
                ranked[task].append((_rank_key(seed, record_id), record_id))
    return {t: [rid for _, rid in sorted(rows)[:per_task]] for t, rows in ranked.items()}


def data_identity(data_dir: str) -> str:
    """What the training data is, for the plan hash: the writing stage's fingerprint when it left a
    manifest, else the names and sizes of the record files."""
    manifest = storage.read_manifest(data_dir)
    if manifest and manifest.get("fingerprint"):
        return f"manifest:{manifest['fingerprint']}"
    fs, path = storage.filesystem(storage.join(data_dir, "records"))
    listing = sorted((f, fs.size(f)) for f in fs.find(path) if f.endswith(".parquet")) if fs.exists(path) else []
    return "files:" + storage.fingerprint([[f.rsplit("/records/", 1)[-1], n] for f, n in listing])


def read_stage_rows(fs, path: str, columns: list[str], tasks: set[str], ids: set[str] | None,
                    batch_rows: int = 64) -> Iterator:
    """Rows of the stage's tasks (and chosen ids) from one Parquet file, ``batch_rows`` at a time.

    Row groups whose ``task`` statistics exclude the stage are skipped unread; in the rest the
    ``id`` and ``task`` columns are read first, and the other columns (the images) only for row
    groups that hold a wanted row.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    wanted_tasks = pa.array(sorted(tasks))
    wanted_ids = pa.array(sorted(ids)) if ids is not None else None
    with fs.open(path, "rb") as fh:
        pf = pq.ParquetFile(fh)
        names = pf.schema_arrow.names
        task_col = names.index("task")
        for i in range(pf.num_row_groups):
            stats = pf.metadata.row_group(i).column(task_col).statistics
            if stats is not None and stats.has_min_max and not any(stats.min <= t <= stats.max for t in tasks):
                continue
            keys = pf.read_row_group(i, columns=["id", "task"])
            mask = pc.is_in(keys.column("task"), value_set=wanted_tasks)
            if wanted_ids is not None:
                mask = pc.and_(mask, pc.is_in(keys.column("id"), value_set=wanted_ids))
            if not pc.any(mask).as_py():
                continue
            rows = pf.read_row_group(i, columns=columns).filter(mask)
            for start in range(0, rows.num_rows, batch_rows):
                yield rows.slice(start, batch_rows)


class EncodeRecords:
    """Parquet files in, encoded training examples out (the CPU half of preprocessing).

    Each call takes one file path, reads the stage's rows with ``read_stage_rows`` and yields
    batches of token ids, labels and uint8 pixels as it goes, so a large file never sits in memory
    whole. The record policy of an ablation is applied here.
    """

    def __init__(self, processor, policy: RecordPolicy, seed: int, tasks: list[str], ids: list[str] | None,
                 filesystem):
        self.processor = processor
        self.policy = policy
        self.seed = seed
        self.tasks = set(tasks)
        self.ids = set(ids) if ids is not None else None
        self.fs = filesystem
        self._pools: dict[str, list[str]] = {}

    def _instruction(self, task: str, record_id: str, built: str) -> str:
        k = self.policy.instructions_per_task
        if not k:
            return built
        if task not in self._pools:
            from ying.data.instructions import load_pool

            self._pools[task] = load_pool(task)[:k]
        pool = self._pools[task]
        return pool[int.from_bytes(_rank_key(self.seed, record_id)[:8], "big") % len(pool)]

    def _answer(self, row: dict) -> str:
        if self.policy.answers == "original":
            original = json.loads(row.get("meta") or "{}").get("original_answer")
            if isinstance(original, str) and original.strip():
                return original
        return row["outputs"]

    def encode(self, table) -> dict[str, np.ndarray]:
        ids, labels, pixels, n_images, record_ids = [], [], [], [], []
        for row in table.to_pylist():
            record = {
                "images": row["images"],
                "instruction": self._instruction(row["task"], row["id"], row["instruction"]),
                "inputs": row["inputs"],
                "outputs": self._answer(row),
            }
            encoded = self.processor.encode_train_arrays(record)
            ids.append(encoded["input_ids"])
            labels.append(encoded["labels"])
            pixels.append(encoded["pixels"].tobytes())
            n_images.append(encoded["pixels"].shape[0])
            record_ids.append(row["id"])
        return {
            "id": np.asarray(record_ids, dtype=object),
            "input_ids": _object_array(ids),
            "labels": _object_array(labels),
            "pixels": np.asarray(pixels, dtype=object),
            "n_images": np.asarray(n_images, dtype=np.int32),
        }

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        for path in batch["path"]:
            for table in read_stage_rows(self.fs, str(path), self.policy.columns(), self.tasks, self.ids):
                yield self.encode(table)


def encode_files(batch: dict[str, np.ndarray], *, processor, policy: RecordPolicy, seed: int,
                 tasks: list[str], ids: list[str] | None, filesystem) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data task: ``EncodeRecords`` over a batch of file paths (one file: building it is cheap)."""
    yield from EncodeRecords(processor, policy, seed, tasks, ids, filesystem)(batch)


def _object_array(items: list[np.ndarray]) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def stage_datasets(data_dir: str, tasks: list[str], processor, policy: RecordPolicy, seed: int,
                   val_examples: int, encode_tasks: int = 1, encode_cpus: float = 1.0,
                   filesystem=None) -> dict[str, Any]:
    """{"train": Dataset, "validation": materialized Dataset (absent when no stage task has
    validation records)}. ``filesystem`` overrides the one of ``data_dir`` (benchmarks count bytes with it).

    The datasets start from the list of the stage's files, one block per file, so an epoch is one
    pass of at most ``encode_tasks`` concurrent tasks over those files; the file order is shuffled
    by seed.
    """
    import ray.data

    def build(files: list[str], fs, ids: list[str] | None):
        ds = ray.data.from_items([{"path": f} for f in files], override_num_blocks=len(files))
        return ds.map_batches(
            encode_files,
            fn_kwargs={"processor": processor, "policy": policy, "seed": seed, "tasks": tasks, "ids": ids,
                       "filesystem": filesystem or fs},
            batch_size=1,  # one file per call; the task yields encoded batches as it reads
            compute=ray.data.TaskPoolStrategy(size=max(1, encode_tasks)),
            num_cpus=encode_cpus,
        )

    fs, train_files = stage_files(data_dir, "train", tasks)
    if not train_files:
        raise ValueError(f"no training records of tasks {tasks} under {_split_dir(data_dir, 'train')}")
    train_ids = None
    if policy.max_per_task:
        chosen = select_ids(data_dir, "train", tasks, policy.max_per_task, seed)
        train_ids = sorted(i for ids in chosen.values() for i in ids)
    out = {"train": build(train_files, fs, train_ids).randomize_block_order(seed=seed)}

    if val_examples > 0:
        per_task = math.ceil(val_examples / max(1, len(tasks)))
        chosen = select_ids(data_dir, "validation", tasks, per_task, seed)
        val_ids = sorted(i for ids in chosen.values() for i in ids)
        if val_ids:
            _, val_files = stage_files(data_dir, "validation", tasks)
            # Small and read once: materialized now, before training takes the CPUs.
            out["validation"] = build(val_files, fs, val_ids).materialize()
    return out


def epoch_batches(shard, processor, micro_batch: int, seed: int, epoch: int, shuffle_buffer: int,
                  prefetch_batches: int, skip: int = 0, drop_last: bool = True) -> Iterator[dict]:
    """One epoch of a worker's micro-batches as model inputs (on CPU), after the first ``skip``."""
    image_shape = (3, processor.image_size, processor.image_size)

    def collate(batch: dict[str, np.ndarray]) -> dict:
        pixels = [np.frombuffer(b, dtype=np.uint8).reshape((n, *image_shape))
                  for b, n in zip(batch["pixels"], batch["n_images"])]
        return processor.collate_arrays(list(batch["input_ids"]), list(batch["labels"]), pixels)

    iterator = shard.iter_torch_batches(
        batch_size=micro_batch, collate_fn=collate, drop_last=drop_last, prefetch_batches=prefetch_batches,
        local_shuffle_buffer_size=shuffle_buffer if drop_last and shuffle_buffer > micro_batch else None,
        local_shuffle_seed=seed * 1_000_003 + epoch,
    )
    for i, batch in enumerate(iterator):
        if i >= skip:
            yield batch
