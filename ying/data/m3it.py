"""Import and export the released M3IT layout (https://huggingface.co/datasets/MMInstruction/M3IT).

The release keeps one folder per task under ``data/<group>/<task>/``, holding the task's instruction
pool (``instructions.json``, in a few tasks ``instruction.json``: a JSON list of strings) and one JSON
Lines file per split. Split files are named ``train.jsonl``, ``val.jsonl``, ``validation.jsonl`` or
``test.jsonl``, some with a prefix (``mocheg_train.jsonl``, ``esnlive_test.jsonl``). A line holds
``instruction``, ``inputs``, ``outputs`` and ``image_base64_str`` (a list of base64-encoded images;
a video is its frames) and may hold ``meta``. Keys vary between tasks: ``input``/``output``,
``image_base64``/``img_str``/``image_str``, a single base64 string instead of a list.
Some folder names differ from the config names (``vqav2`` is ``vqa-v2``, ``itm`` is ``coco-itm``).

Import (``import_m3it``) writes our records (``records/<split>/*.parquet`` with ``RECORD_SCHEMA``) and
``rejects/rejects.jsonl``, one reason per bad line; per task and split read = written + rejected.
A record's id is ``{task}-{split}-{source id}``, where the source id is ``meta.source_id``, else
``meta.id``, else the line's index in its file; the source id is stored as ``meta.source_id`` so an
export and a re-import keep it. Category and language come from our task registry when the task
is known; otherwise the category is the group folder's name and the language is ``zh`` when the
text contains CJK characters. Images are decoded from base64 and kept byte for byte. Keys we don't
map are kept in ``meta.m3it_extra``; a ``meta`` that is not a JSON object is kept as ``meta.m3it_meta``.

Export (``export_m3it``) writes ``data/<category>/<task>/instructions.json`` (our pool for the task,
else the distinct instructions its records use) and ``train.jsonl``/``val.jsonl``/``test.jsonl``
(the release's most common split names), one line per record in stored order, images as base64.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any, Iterator

from .. import storage
from .build import _parquet_files, check_image_bytes, records_dir, rejects_path
from .schema import CATEGORIES, RECORD_SCHEMA, SPLITS, Reject, make_record_id, validate_record

__all__ = ["M3IT_FOLDER_ALIASES", "EXPORT_SPLIT_FILES", "find_task_folders", "parse_m3it_line",
           "import_m3it", "export_m3it"]

# Release folder name -> our task key, where the two differ (the release's loader maps these).
M3IT_FOLDER_ALIASES = {"vqav2": "vqa-v2", "itm": "coco-itm", "esnlive": "snli-ve", "e-snli-ve": "snli-ve",
                       "textvqa": "text-vqa", "stvqa": "st-vqa", "ocrvqa": "ocr-vqa", "aokvqa": "a-okvqa",
                       "scienceqa": "science-qa", "visualmrc": "visual-mrc", "visdial": "visual-dialog"}
# Group folder name -> our category, for tasks our registry does not know.
_GROUP_CATEGORY = {**{c: c for c in CATEGORIES}, "cls": "classification", "cap": "captioning",
                   "reason": "reasoning", "gen": "generation", "zh": "chinese"}
EXPORT_SPLIT_FILES = {"train": "train.jsonl", "validation": "val.jsonl", "test": "test.jsonl"}

_SPLIT_RE = re.compile(r"(?:^|[_\-.])(train|val|validation|dev|test)$")
_SPLIT_NAME = {"train": "train", "val": "validation", "validation": "validation", "dev": "validation", "test": "test"}
_INSTRUCTION_KEYS = ("instruction",)
_INPUT_KEYS = ("inputs", "input")
_OUTPUT_KEYS = ("outputs", "output")
_IMAGE_KEYS = ("image_base64_str", "image_base64", "img_str", "image_str", "images")
_KNOWN_KEYS = set(_INSTRUCTION_KEYS + _INPUT_KEYS + _OUTPUT_KEYS + _IMAGE_KEYS + ("meta",))
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_MAX_IMAGE_PIXELS = 64_000_000


class M3ITLineError(ValueError):
    """A line that can't become a record; the message is the reason."""


def _task_key(folder: str) -> str:
    key = folder.strip().lower().replace("_", "-")
    return M3IT_FOLDER_ALIASES.get(key, M3IT_FOLDER_ALIASES.get(key.replace("-", ""), key))


def _split_of(file_name: str) -> str | None:
    if not file_name.endswith(".jsonl"):
        return None
    m = _SPLIT_RE.search(file_name[: -len(".jsonl")].lower())
    return _SPLIT_NAME[m.group(1)] if m else None


def find_task_folders(root: str) -> list[dict[str, Any]]:
    """Every folder under ``root`` (itself included) holding split ``*.jsonl`` files, as
    ``{"task", "folder", "group", "splits": {split: [files]}, "instructions": path or None}``."""
    fs, base = storage.filesystem(root)
    if not fs.exists(base):
        raise FileNotFoundError(f"M3IT root {root} does not exist")
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(fs.find(base)):
        folder, _, name = path.rpartition("/")
        split = _split_of(name)
        if split is None:
            continue
        entry = found.get(folder)
        if entry is None:
            parent = folder.rpartition("/")[0]
            instructions = next((f"{folder}/{n}" for n in ("instructions.json", "instruction.json")
                                 if fs.exists(f"{folder}/{n}")), None)
            entry = found[folder] = {"task": _task_key(folder.rpartition("/")[2]), "folder": folder,
                                     "group": parent.rpartition("/")[2].lower(), "splits": {},
                                     "instructions": instructions}
        entry["splits"].setdefault(split, []).append(path)
    return list(found.values())


def _first(raw: dict, keys: tuple[str, ...]) -> tuple[str | None, Any]:
    for k in keys:
        if k in raw:
            return k, raw[k]
    return None, None


def _decode_images(value: Any) -> list[bytes]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise M3ITLineError("no images: the image field is empty or not a base64 string / list of strings")
    images = []
    for k, item in enumerate(items):
        if not isinstance(item, str):
            raise M3ITLineError(f"image {k} is {type(item).__name__}, not a base64 string")
        if item.startswith("data:") and "," in item:  # a data: URI; the payload follows the comma
            item = item.split(",", 1)[1]
        try:
            data = base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError) as e:
            raise M3ITLineError(f"image {k} is not valid base64: {e}") from None
        problem = check_image_bytes(data, _MAX_IMAGE_PIXELS)
        if problem:
            raise M3ITLineError(f"image {k}: {problem}")
        images.append(data)
    return images


def _text(raw: dict, keys: tuple[str, ...], required: bool) -> str:
    key, value = _first(raw, keys)
    if key is None:
        if required:
            raise M3ITLineError(f"missing field {keys[0]!r} (also looked for {list(keys[1:])})")
        return ""
    if not isinstance(value, str):
        raise M3ITLineError(f"field {key!r} is {type(value).__name__}, not text")
    return value


def parse_m3it_line(raw: Any, task: str, split: str, index: int | str, category: str | None,
                    lang: str | None) -> dict[str, Any]:
    """One parsed JSON line -> a RECORD_SCHEMA row; raises M3ITLineError with the reason.

    ``index`` is the line's source id when its meta names none."""
    if not isinstance(raw, dict):
        raise M3ITLineError(f"line is a JSON {type(raw).__name__}, not an object")
    instruction = _text(raw, _INSTRUCTION_KEYS, required=True)
    inputs = _text(raw, _INPUT_KEYS, required=False)
    outputs = _text(raw, _OUTPUT_KEYS, required=True)
    image_key, image_value = _first(raw, _IMAGE_KEYS)
    if image_key is None:
        raise M3ITLineError(f"missing images: none of {list(_IMAGE_KEYS)}")
    images = _decode_images(image_value)

    raw_meta = raw.get("meta")
    if isinstance(raw_meta, str):
        try:  # some releases store meta as a JSON string
            parsed = json.loads(raw_meta)
            raw_meta = parsed if isinstance(parsed, dict) else raw_meta
        except ValueError:
            pass
    meta: dict[str, Any] = dict(raw_meta) if isinstance(raw_meta, dict) else (
        {} if raw_meta is None else {"m3it_meta": raw_meta})
    source_id = meta.get("source_id", meta.get("id", index))
    if isinstance(source_id, (dict, list)) or source_id is None or str(source_id) == "":
        source_id = index
    meta["source_id"] = str(source_id)  # an existing key keeps its place, so our own meta round-trips byte for byte
    extra = {k: v for k, v in raw.items() if k not in _KNOWN_KEYS}
    if extra:
        meta["m3it_extra"] = {**meta.get("m3it_extra", {}), **extra}
    if lang is None:
        lang = "zh" if _CJK.search(instruction + inputs + outputs) else "en"
    record = {
        "id": make_record_id(task, split, str(source_id)),
        "task": task,
        "category": category,
        "lang": lang,
        "split": split,
        "images": images,
        "instruction": instruction,
        "inputs": inputs,
        "outputs": outputs,
        "meta": json.dumps(meta, ensure_ascii=False),  # key order as given: an export re-imports identically
    }
    problem = validate_record(record)
    if problem:
        raise M3ITLineError(problem)
    return record


def _iter_lines(path: str) -> Iterator[tuple[int, bytes]]:
    fs, p = storage.filesystem(path)
    with fs.open(p, "rb") as f:
        for index, line in enumerate(f):
            yield index, line


class _ParquetSink:
    """Rows of one split to ``records/<split>/<name>-NNNNN.parquet``, flushed every ``batch`` rows."""

    def __init__(self, out_dir: str, split: str, name: str, batch: int = 256, rows_per_file: int = 2000):
        self.dir, self.name, self.batch, self.rows_per_file = records_dir(out_dir, split), name, batch, rows_per_file
        self.rows: list[dict] = []
        self.writer = self.fh = None
        self.files = self.in_file = 0

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.batch:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.rows:
            return
        if self.writer is None:
            fs, p = storage.filesystem(self.dir)
            fs.makedirs(p, exist_ok=True)
            self.fh = fs.open(f"{p}/{self.name}-{self.files:05d}.parquet", "wb")
            self.writer = pq.ParquetWriter(self.fh, RECORD_SCHEMA)
            self.files += 1
        self.writer.write_table(pa.Table.from_pylist(self.rows, schema=RECORD_SCHEMA))
        self.in_file += len(self.rows)
        self.rows = []
        if self.in_file >= self.rows_per_file:
            self.close()

    def close(self) -> None:
        self._flush() if self.rows else None
        if self.writer is not None:
            self.writer.close()
            self.fh.close()
            self.writer = self.fh = None
            self.in_file = 0


def _clear_split_dirs(out_dir: str) -> None:
    for split in SPLITS:
        fs, p = storage.filesystem(records_dir(out_dir, split))
        if fs.exists(p):  # a re-import replaces, never mixes with, old shards
            fs.rm(p, recursive=True)


def import_m3it(root: str, out_dir: str, tasks: list[str] | None = None, progress=print) -> dict:
    """Read the M3IT layout under ``root`` into our records under ``out_dir``.

    ``tasks`` keeps only those task keys (our keys, e.g. ``vqa-v2``). Returns
    ``{task: {split: {read, written, rejected}}}``; ``progress`` gets one line per file (None: quiet).
    """
    from .tasks import TASKS

    folders = find_task_folders(root)
    if tasks is not None:
        unknown = sorted(set(tasks) - {f["task"] for f in folders})
        if unknown:
            raise ValueError(f"tasks {unknown} are not under {root}; found {sorted(f['task'] for f in folders)}")
        folders = [f for f in folders if f["task"] in set(tasks)]
    if not folders:
        raise ValueError(f"no M3IT task folders (a folder with train/val/test .jsonl files) under {root}")
    seen_tasks: dict[str, str] = {}
    for f in folders:
        if f["task"] in seen_tasks:
            raise ValueError(f"task {f['task']!r} is in two folders: {seen_tasks[f['task']]} and {f['folder']}")
        seen_tasks[f["task"]] = f["folder"]

    _clear_split_dirs(out_dir)
    stats: dict[str, dict[str, dict[str, int]]] = {}
    rejects: list[Reject] = []
    for folder in sorted(folders, key=lambda f: f["task"]):
        task = folder["task"]
        module = TASKS.get(task)
        category = module.SPEC.category if module else _GROUP_CATEGORY.get(folder["group"])
        lang = module.SPEC.lang if module else None
        for split in SPLITS:
            paths = folder["splits"].get(split, [])
            ids: set[str] = set()
            for path in paths:
                counts = stats.setdefault(task, {}).setdefault(split, {"read": 0, "written": 0, "rejected": 0})
                stem = path.rpartition("/")[2][: -len(".jsonl")]
                sink = _ParquetSink(out_dir, split, f"{task}-{stem}")
                for index, line in _iter_lines(path):
                    if not line.strip():
                        continue  # a blank line (a trailing newline) is not a record
                    counts["read"] += 1
                    where = f"{path}:{index + 1}"
                    try:
                        if category is None:
                            raise M3ITLineError(
                                f"task {task!r} is not in our registry and its group folder {folder['group']!r} "
                                f"is not a category ({', '.join(CATEGORIES)})")
                        try:
                            raw = json.loads(line.decode("utf-8"))
                        except UnicodeDecodeError as e:
                            raise M3ITLineError(f"line is not UTF-8: {e}") from None
                        except ValueError as e:
                            raise M3ITLineError(f"line is not JSON: {e}") from None
                        # Two files of one split (rare) would share line numbers: name the file too.
                        label = index if len(paths) == 1 else f"{stem}:{index}"
                        record = parse_m3it_line(raw, task, split, label, category, lang)
                        if record["id"] in ids:
                            raise M3ITLineError(f"duplicate record id {record['id']!r}")
                    except M3ITLineError as e:
                        counts["rejected"] += 1
                        rejects.append(Reject(task, split, where, str(e)))
                        continue
                    ids.add(record["id"])
                    sink.add(record)
                    counts["written"] += 1
                sink.close()
                if progress:
                    progress(f"[m3it import] {task}/{split} {path}: {counts['written']} written, "
                             f"{counts['rejected']} rejected")
    lines = "".join(json.dumps(r.to_row(), ensure_ascii=False) + "\n" for r in rejects)
    storage.write_bytes_atomic(rejects_path(out_dir), lines.encode("utf-8"))
    return stats


def _m3it_line(record: dict) -> dict[str, Any]:
    meta = json.loads(record["meta"]) if record.get("meta") else {}
    extra = meta.pop("m3it_extra", {}) if isinstance(meta, dict) else {}
    line = {
        "instruction": record["instruction"],
        "inputs": record["inputs"],
        "outputs": record["outputs"],
        "image_base64_str": [base64.b64encode(bytes(b)).decode("ascii") for b in record["images"]],
        "meta": meta,
    }
    # Keys the release had that we don't map go back to the top level, where they came from.
    line.update({k: v for k, v in extra.items() if k not in line})
    return line


def export_m3it(data_dir: str, out_root: str, tasks: list[str] | None = None, progress=print) -> dict:
    """Write our records under ``data_dir`` as the M3IT layout under ``out_root``.

    Returns ``{task: {split: lines written}}``.
    """
    import pyarrow.parquet as pq

    from .instructions import load_pool
    from .tasks import TASKS

    wanted = None if tasks is None else set(tasks)
    out_fs, out_base = storage.filesystem(out_root)
    counts: dict[str, dict[str, int]] = {}
    categories: dict[str, str] = {}
    used_instructions: dict[str, list[str]] = {}
    handles: dict[tuple[str, str], Any] = {}
    try:
        for split in SPLITS:
            fs, files = _parquet_files(records_dir(data_dir, split))
            for f in files:
                with fs.open(f, "rb") as fh:
                    for batch in pq.ParquetFile(fh).iter_batches(batch_size=256, columns=RECORD_SCHEMA.names):
                        for record in batch.to_pylist():
                            task = record["task"]
                            if wanted is not None and task not in wanted:
                                continue
                            category = categories.setdefault(task, record["category"])
                            key = (task, split)
                            if key not in handles:
                                folder = f"{out_base}/data/{category}/{task}"
                                out_fs.makedirs(folder, exist_ok=True)
                                handles[key] = out_fs.open(f"{folder}/{EXPORT_SPLIT_FILES[split]}", "wb")
                            line = json.dumps(_m3it_line(record), ensure_ascii=False) + "\n"
                            handles[key].write(line.encode("utf-8"))
                            counts.setdefault(task, {}).setdefault(split, 0)
                            counts[task][split] += 1
                            pool = used_instructions.setdefault(task, [])
                            if task not in TASKS and record["instruction"] not in pool:
                                pool.append(record["instruction"])
            if progress:
                done = sum(c.get(split, 0) for c in counts.values())
                progress(f"[m3it export] {split}: {done} lines")
    finally:
        for h in handles.values():
            h.close()
    if wanted is not None and wanted - set(counts):
        raise ValueError(f"no records for tasks {sorted(wanted - set(counts))} under {data_dir}")
    for task, category in categories.items():
        pool = load_pool(task) if task in TASKS else used_instructions[task]
        text = json.dumps(pool, ensure_ascii=False, indent=2).encode("utf-8")
        storage.write_bytes_atomic(storage.join(out_root, "data", category, task, "instructions.json"), text)
    return counts
