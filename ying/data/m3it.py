"""Import and export the released M3IT layout (https://huggingface.co/datasets/MMInstruction/M3IT).

What the release holds (read on the Hub: the repository's file tree at several commits, and its own
loader ``M3IT.py``, called ``M2BI.py`` before the rename, in the repository's history):

- Five group folders, ``data/{captioning,classification,generation,reasoning,vqa}/<folder>/``. KVQA,
  Chinese and video tasks live inside them (``okvqa`` under vqa, ``coco-cn`` under captioning, ``ss``
  under classification, ...). ``<folder>`` is mostly the config name, not always: ``vqav2``, ``itm``,
  ``science_qa``, ``visual_mrc``, ``visual_dialog``, ``image_paragraph_captioning``,
  ``chinesefoodnet-10`` (``RELEASE_FOLDERS`` maps all 40 of our tasks).
- Per folder ``instructions.json`` (a few: ``instruction.json``; a JSON list of strings) and split files
  ``train``/``val``/``validation``/``test`` ``.jsonl``, some with a prefix (``mocheg_train.jsonl``,
  ``winoground_test.jsonl``), and in later commits newer files beside the first ones:
  ``train_v2.jsonl`` (okvqa, a-okvqa, viquae: paraphrased answers) or dated ones such as
  ``train_2023-10-07.jsonl`` (clevr, visual_dialog: the rephrased data). The loader reads one file
  per split, the newest; so does the import (dated, else ``_vN``, else plain) and it names the files
  it left aside.
- Three line layouts, all read here:
  * flat: ``instruction``, ``inputs``, ``outputs``, ``image_base64_str`` (a list; a video is its frames),
    optional ``meta``; some tasks spell them ``input``/``output`` and ``image_base64``/``img_str``/
    ``image_str``/``images``/``image``, with a single string instead of a list;
  * rephrased (the dated files): the original instance under ``meta`` (``instruction``, ``inputs``,
    ``image_base64_str``, ``outputs``) and the rewritten answer in ``answer``; the loader yields
    ``meta.instruction``, ``meta.inputs``, ``meta.image_base64_str`` and ``answer``;
  * raw: ``question`` and ``answer`` / ``original_answer`` / ``paraphrased_answer`` with the image as
    ``image``/``images``/``img_str``/``image_str`` (a string or a list) and no instruction: the loader
    draws one from the folder's instructions and takes the paraphrase unless it is a refusal.

Import (``import_m3it``) is a Ray Data job: files are cut into byte ranges (``chunk_bytes``) that are
read in parallel, line by line, so no process holds a file; lines become our records
(``records/<split>/*.parquet``, ``RECORD_SCHEMA``) or rejects (``rejects/rejects.jsonl``, one reason per
line, naming the file and line); per task and split read = written + rejected, checked. A record's id
is ``{task}-{split}-{source id}``: ``meta.source_id``, else ``meta.id`` (raw layout: the line's
``id``), else the line's number in its file (0-based); the source id is stored as ``meta.source_id``, so
an export and a re-import keep it. A second line with an id already written is rejected. Category and
language come from our task registry when the task is known; otherwise the category is the group
folder's and the language is ``zh`` when the text contains CJK characters. Images are decoded from
base64 and kept byte for byte. For the raw layout the instruction is drawn from the folder's pool by
the record id (stable), the paraphrase is kept when it passes our acceptance check against the
original answer (``ying.data.rephrase.prompt``), else the basic template of the original answer is
used; ``meta.original_answer`` and ``meta.rephrase.status`` record which. Unmapped keys are kept in
``meta.m3it_extra``; a ``meta`` that is not a JSON object is kept as ``meta.m3it_meta``.

Export (``export_m3it``) writes the release's tree, ``data/<group>/<folder>/instructions.json`` (our
pool for the task, else the distinct instructions its records use) and ``train.jsonl``/``val.jsonl``/
``test.jsonl``, one flat line per record in stored order, images as base64.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
import threading
from typing import Any, Iterator

import pyarrow as pa

from .. import storage
from . import records
from .build import check_image_bytes
from .schema import CATEGORIES, RECORD_SCHEMA, SPLITS, make_record_id, validate_record

__all__ = ["RELEASE_GROUPS", "RELEASE_FOLDERS", "EXPORT_SPLIT_FILES", "find_task_folders", "parse_m3it_line",
           "import_m3it", "import_release", "export_m3it", "M3ITLineError"]

log = logging.getLogger(__name__)

RELEASE_GROUPS = ("captioning", "classification", "generation", "reasoning", "vqa")
# Our task -> (group folder, task folder) in the release.
RELEASE_FOLDERS: dict[str, tuple[str, str]] = {
    **{t: ("captioning", f) for t, f in [("coco", "coco"), ("textcap", "textcap"), ("coco-cn", "coco-cn"),
                                          ("image-paragraph-captioning", "image_paragraph_captioning"),
                                          ("flickr8k-cn", "flickr8k-cn"), ("msrvtt", "msrvtt")]},
    **{t: ("classification", f) for t, f in [("coco-goi", "coco-goi"), ("coco-text", "coco-text"),
                                              ("imagenet", "imagenet"), ("coco-itm", "itm"), ("snli-ve", "snli-ve"),
                                              ("mocheg", "mocheg"), ("iqa", "iqa"), ("ss", "ss"),
                                              ("winoground", "winoground"), ("chinese-food", "chinesefoodnet-10")]},
    **{t: ("reasoning", f) for t, f in [("clevr", "clevr"), ("nlvr", "nlvr"), ("science-qa", "science_qa"),
                                         ("vcr", "vcr"), ("visual-mrc", "visual_mrc")]},
    **{t: ("vqa", t) for t in ("shapes", "docvqa", "ocr-vqa", "st-vqa", "text-vqa", "gqa", "okvqa", "a-okvqa",
                               "viquae", "fm-iqa", "activitynet-qa", "ivqa", "msrvtt-qa", "msvd-qa")},
    "vqa-v2": ("vqa", "vqav2"),
    **{t: ("generation", f) for t, f in [("vist", "vist"), ("visual-dialog", "visual_dialog"),
                                          ("multi30k", "multi30k"), ("mmchat", "mmchat")]},
}
# Release folder name -> our task key, where they differ (also names seen in older commits).
_FOLDER_TASK = {**{folder: task for task, (_, folder) in RELEASE_FOLDERS.items() if folder != task},
                "esnlive": "snli-ve", "e-snli-ve": "snli-ve", "textvqa": "text-vqa", "stvqa": "st-vqa",
                "ocrvqa": "ocr-vqa", "aokvqa": "a-okvqa", "scienceqa": "science-qa", "visualmrc": "visual-mrc",
                "visdial": "visual-dialog", "vqa_v2": "vqa-v2"}
# Group folder -> our category, for tasks our registry does not know (and back, for their export).
_GROUP_CATEGORY = {**{c: c for c in CATEGORIES}, "cls": "classification", "cap": "captioning",
                   "reason": "reasoning", "gen": "generation", "zh": "chinese"}
_CATEGORY_GROUP = {"kvqa": "vqa"}  # the release keeps KVQA under vqa
EXPORT_SPLIT_FILES = {"train": "train.jsonl", "validation": "val.jsonl", "test": "test.jsonl"}

_SPLIT_FILE = re.compile(r"^(?:.+[_\-.])?(train|val|validation|dev|test)(?:[_\-](v\d+|\d{4}-\d{2}-\d{2}))?\.jsonl$",
                         re.IGNORECASE)
_SPLIT_NAME = {"train": "train", "val": "validation", "validation": "validation", "dev": "validation", "test": "test"}
_INSTRUCTION_KEYS = ("instruction",)
_INPUT_KEYS = ("inputs", "input")
_OUTPUT_KEYS = ("outputs", "output")
_IMAGE_KEYS = ("image_base64_str", "image_base64", "img_str", "image_str", "images", "image")
_FLAT_KEYS = set(_INSTRUCTION_KEYS + _INPUT_KEYS + _OUTPUT_KEYS + _IMAGE_KEYS + ("meta",))
_RAW_ANSWER_KEYS = ("paraphrased_answer", "original_answer", "answer")
_CONTEXT_KEYS = ("rationale", "rationales", "caption", "captions", "ocr_tokens")  # what the rephrase prompt reads
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_MAX_IMAGE_PIXELS = 64_000_000
_KIND_COLUMNS = [("_kind", pa.string()), ("_reason", pa.string()), ("_source", pa.string()), ("_read", pa.int64())]
_OUT_SCHEMA = pa.schema(list(RECORD_SCHEMA) + [pa.field(n, t) for n, t in _KIND_COLUMNS])


class M3ITLineError(ValueError):
    """A line that can't become a record; the message is the reason."""


# -- the release's folders and files ------------------------------------------------------------------


def _task_key(folder: str) -> str:
    name = folder.strip().lower()
    if name in _FOLDER_TASK:
        return _FOLDER_TASK[name]
    key = name.replace("_", "-")
    return _FOLDER_TASK.get(key, _FOLDER_TASK.get(key.replace("-", ""), key))


def _split_file(file_name: str) -> tuple[str, tuple[int, str]] | None:
    """``(split, rank)`` of a split file, the newest variant ranking highest; None for other files."""
    m = _SPLIT_FILE.match(file_name)
    if not m:
        return None
    variant = (m.group(2) or "").lower()
    if not variant:
        rank = (0, "")
    elif variant.startswith("v"):
        rank = (1, f"{int(variant[1:]):06d}")
    else:
        rank = (2, variant)
    return _SPLIT_NAME[m.group(1).lower()], rank


def find_task_folders(root: str) -> list[dict[str, Any]]:
    """Every folder under ``root`` (itself included) holding split ``*.jsonl`` files, as ``{"task", "folder",
    "group", "splits": {split: [files]}, "superseded": [(file, newer file)], "instructions": path or None}``."""
    fs, base = storage.filesystem(root)
    if not fs.exists(base):
        raise FileNotFoundError(f"M3IT root {root} does not exist")
    # fsspec lists object-store paths without their scheme; put it back so workers open the same files.
    scheme = root.split("://", 1)[0] + "://" if "://" in root else ""
    candidates: dict[str, dict[str, list[tuple[tuple[int, str], str]]]] = {}
    for path in sorted(scheme + f for f in fs.find(base)):
        folder, _, name = path.rpartition("/")
        found = _split_file(name)
        if found is not None:
            candidates.setdefault(folder, {}).setdefault(found[0], []).append((found[1], path))
    out = []
    for folder, splits in candidates.items():
        parent = folder.rpartition("/")[0]
        entry = {"task": _task_key(folder.rpartition("/")[2]), "folder": folder,
                 "group": parent.rpartition("/")[2].lower(), "splits": {}, "superseded": [],
                 "instructions": next((f"{folder}/{n}" for n in ("instructions.json", "instruction.json")
                                       if storage.exists(f"{folder}/{n}")), None)}
        for split, files in splits.items():
            newest = max(rank for rank, _ in files)
            entry["splits"][split] = [p for rank, p in files if rank == newest]
            entry["superseded"] += [(p, entry["splits"][split][0]) for rank, p in files if rank != newest]
        out.append(entry)
    return out


def _load_pool(path: str | None) -> list[str] | None:
    if path is None:
        return None
    try:
        pool = storage.read_json(path)
    except (ValueError, OSError) as e:
        log.warning("M3IT instructions %s unreadable (%s); lines without an instruction will be rejected", path, e)
        return None
    return [p for p in pool if isinstance(p, str) and p.strip()] or None if isinstance(pool, list) else None


# -- one line -------------------------------------------------------------------------------------------


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


def _text(raw: dict, keys: tuple[str, ...], required: bool, where: str = "") -> str:
    key, value = _first(raw, keys)
    if key is None:
        if required:
            raise M3ITLineError(f"missing field {where}{keys[0]!r} (also looked for {list(keys[1:])})")
        return ""
    if not isinstance(value, str):
        raise M3ITLineError(f"field {where}{key!r} is {type(value).__name__}, not text")
    return value


def _as_meta(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:  # some files store meta as a JSON string
            parsed = json.loads(value)
            value = parsed if isinstance(parsed, dict) else value
        except ValueError:
            pass
    if isinstance(value, dict):
        return dict(value)
    return {} if value is None else {"m3it_meta": value}


def _images(raw: dict, *fallbacks: dict) -> list[bytes]:
    for source in (raw, *fallbacks):
        key, value = _first(source, _IMAGE_KEYS)
        if key is not None:
            return _decode_images(value)
    raise M3ITLineError(f"missing images: none of {list(_IMAGE_KEYS)}")


def _layout(raw: dict) -> str:
    inner = raw.get("meta")
    if isinstance(inner, dict) and "instruction" in inner and "instruction" not in raw:
        return "rephrased"
    if "instruction" not in raw and ("question" in raw or any(k in raw for k in _RAW_ANSWER_KEYS)):
        return "raw"
    return "flat"


def _pick_instruction(pool: list[str], task: str, split: str, source_id: str) -> str:
    digest = hashlib.sha256(f"{task}/{split}/{source_id}".encode("utf-8")).digest()
    return pool[int.from_bytes(digest[:8], "big") % len(pool)]


def _raw_answer(raw: dict, question: str, lang: str) -> tuple[str, str, str | None]:
    """(outputs, original answer, rephrase status or None) of a raw-layout line."""
    from .rephrase.prompt import check_rephrasing, template_sentence

    values = {k: raw.get(k) for k in _RAW_ANSWER_KEYS}
    for k, v in values.items():
        if v is not None and not isinstance(v, str):
            raise M3ITLineError(f"field {k!r} is {type(v).__name__}, not text")
    paraphrased, original, answer = values["paraphrased_answer"], values["original_answer"], values["answer"]
    if paraphrased is not None:
        original = original if original is not None else answer
        if original is None:
            return paraphrased, paraphrased, "rephrased"
        reason = check_rephrasing(paraphrased, original, question)
        return ((paraphrased, original, "rephrased") if reason is None
                else (template_sentence(original, lang), original, f"fallback:{reason}"))
    if answer is not None and original is not None:
        return answer, original, "rephrased"  # the answer is the rewrite of the original
    if answer is not None or original is not None:
        short = answer if answer is not None else original
        return short, short, None
    raise M3ITLineError(f"missing answer: none of {list(_RAW_ANSWER_KEYS)}")


def parse_m3it_line(raw: Any, task: str, split: str, index: int | str, category: str | None,
                    lang: str | None, pool: list[str] | None = None) -> dict[str, Any]:
    """One parsed JSON line (any of the three layouts) -> a RECORD_SCHEMA row; raises M3ITLineError.

    ``index`` is the line's source id when the line names none; ``pool`` the folder's instructions,
    for lines that carry none (the raw layout)."""
    if not isinstance(raw, dict):
        raise M3ITLineError(f"line is a JSON {type(raw).__name__}, not an object")
    layout = _layout(raw)
    status = None
    if layout == "rephrased":
        inner = raw["meta"]
        instruction = _text(inner, _INSTRUCTION_KEYS, required=True, where="meta.")
        inputs = _text(inner, _INPUT_KEYS, required=False, where="meta.")
        outputs = _text(raw, ("answer", "paraphrased_answer"), required=True)
        images = _images(inner, raw)
        meta = _as_meta(inner.get("meta"))
        used = _FLAT_KEYS
        meta.update({k: v for k, v in inner.items() if k not in used})
        original = inner.get("outputs", inner.get("output"))
        if isinstance(original, str) and original.strip():
            meta.setdefault("original_answer", original)
        extra = {k: v for k, v in raw.items() if k not in ("meta", "answer", "paraphrased_answer")}
    elif layout == "raw":
        inputs = _text(raw, _INPUT_KEYS + ("question",), required=False)
        meta = _as_meta(raw.get("meta"))
        images = _images(raw)
        extra = {k: v for k, v in raw.items()
                 if k not in _FLAT_KEYS | set(_RAW_ANSWER_KEYS) | set(_CONTEXT_KEYS) | {"question", "id"}}
        meta.update({k: raw[k] for k in _CONTEXT_KEYS if k in raw})
        instruction = ""  # drawn below, once the record id is known
    else:
        instruction = _text(raw, _INSTRUCTION_KEYS, required=True)
        inputs = _text(raw, _INPUT_KEYS, required=False)
        outputs = _text(raw, _OUTPUT_KEYS, required=True)
        images = _images(raw)
        meta = _as_meta(raw.get("meta"))
        extra = {k: v for k, v in raw.items() if k not in _FLAT_KEYS}

    source_id = meta.get("source_id", meta.get("id", raw.get("id") if layout == "raw" else None))
    if isinstance(source_id, (dict, list)) or source_id is None or str(source_id) == "":
        source_id = index
    meta["source_id"] = str(source_id)  # an existing key keeps its place, so our own meta round-trips byte for byte
    if layout == "raw":
        instruction = _text(raw, _INSTRUCTION_KEYS, required=False)
        if not instruction:
            if not pool:
                raise M3ITLineError("the line has no instruction and its task folder no instructions.json to draw "
                                    "one from")
            instruction = _pick_instruction(pool, task, split, str(source_id))
        line_lang = lang or ("zh" if _CJK.search(inputs + "".join(str(raw.get(k) or "") for k in _RAW_ANSWER_KEYS))
                             else "en")
        outputs, original, status = _raw_answer(raw, inputs, line_lang)
        meta.setdefault("original_answer", original)
        if status is not None:
            meta["rephrase"] = {"status": status, "provider": "m3it-release"}
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


# -- import: a Ray Data job over byte ranges of the split files -------------------------------------------


def _count_newlines(path: str, start: int, end: int) -> int:
    fs, p = storage.filesystem(path)
    n = 0
    with fs.open(p, "rb") as f:
        f.seek(start)
        left = end - start
        while left > 0:
            block = f.read(min(8 << 20, left))
            if not block:
                break
            n += block.count(b"\n")
            left -= len(block)
    return n


def _empty_row(task: str, split: str) -> dict[str, Any]:
    return {"id": "", "task": task, "category": "", "lang": "", "split": split, "images": [], "instruction": "",
            "inputs": "", "outputs": "", "meta": "", "_kind": None, "_reason": None, "_source": None, "_read": None}


def _chunk_rows(chunk: dict[str, Any], progress=None) -> Iterator[pa.Table]:
    """The records and rejects of the lines that start in ``[start, end)`` of one file, in small tables."""
    task, split, path = chunk["task"], chunk["split"], chunk["path"]
    start, end = chunk["start"], chunk["end"]
    rows: list[dict[str, Any]] = []
    size = read = 0
    reported = start  # bytes of this range handed to the progress counter
    fs, p = storage.filesystem(path)
    with fs.open(p, "rb") as f:
        index = chunk["newlines_before"]
        pos = start
        if start > 0:
            f.seek(start - 1)
            if f.read(1) != b"\n":  # the line under way belongs to the chunk before
                pos += len(f.readline())
                index += 1
        while pos < end:
            line = f.readline()
            if not line:
                break
            pos += len(line)
            line_no, index = index, index + 1
            if not line.strip():
                continue  # a blank line (a trailing newline) is not a record
            read += 1
            label = line_no if not chunk["stem"] else f"{chunk['stem']}:{line_no}"
            try:
                if chunk["category"] is None:
                    raise M3ITLineError(f"task {task!r} is not in our registry and its group folder {chunk['group']!r} "
                                        f"is not a category ({', '.join(CATEGORIES)})")
                try:
                    raw = json.loads(line.decode("utf-8"))
                except UnicodeDecodeError as e:
                    raise M3ITLineError(f"line is not UTF-8: {e}") from None
                except ValueError as e:
                    raise M3ITLineError(f"line is not JSON: {e}") from None
                row = {**parse_m3it_line(raw, task, split, label, chunk["category"], chunk["lang"], chunk["pool"]),
                       "_kind": "record", "_reason": None, "_source": None, "_read": None}
                size += sum(len(b) for b in row["images"])
            except M3ITLineError as e:
                row = {**_empty_row(task, split), "_kind": "reject", "_reason": str(e),
                       "_source": f"{path}:{line_no + 1}"}
            rows.append(row)
            if len(rows) >= 256 or size >= 32 << 20:
                yield pa.Table.from_pylist(rows, schema=_OUT_SCHEMA)
                rows, size = [], 0
            if progress is not None and pos - reported >= 8 << 20:
                progress.add.remote(pos - reported)
                reported = pos
    rows.append({**_empty_row(task, split), "_kind": "count", "_read": read})
    yield pa.Table.from_pylist(rows, schema=_OUT_SCHEMA)
    if progress is not None and end > reported:
        progress.add.remote(end - reported)


def _read_chunks(table: pa.Table, progress=None) -> Iterator[pa.Table]:
    for chunk in table.to_pylist():
        yield from _chunk_rows(chunk, progress)


class _BytesDone:
    """Bytes of the split files read so far (for the progress line)."""

    def __init__(self) -> None:
        self.done = 0

    def add(self, n: int) -> None:
        self.done += n

    def get(self) -> int:
        return self.done


def _plan_chunks(folders: list[dict[str, Any]], chunk_bytes: int) -> list[dict[str, Any]]:
    import ray

    from .tasks import TASKS

    chunks = []
    for folder in sorted(folders, key=lambda f: f["task"]):
        task = folder["task"]
        module = TASKS.get(task)
        category = module.SPEC.category if module else _GROUP_CATEGORY.get(folder["group"])
        lang = module.SPEC.lang if module else None
        pool = _load_pool(folder["instructions"])
        for split, paths in folder["splits"].items():
            for path in paths:
                fs, p = storage.filesystem(path)
                size = fs.size(p)
                stem = path.rpartition("/")[2][: -len(".jsonl")] if len(paths) > 1 else ""
                bounds = [(s, min(s + chunk_bytes, size)) for s in range(0, max(size, 1), chunk_bytes)]
                for start, end in bounds:
                    chunks.append({"task": task, "split": split, "group": folder["group"], "category": category,
                                   "lang": lang, "pool": pool, "path": path, "stem": stem, "start": start, "end": end,
                                   "size": end - start, "newlines_before": 0})
    # Line numbers: a chunk's first line number is the count of newlines before it in its file,
    # counted by Ray tasks over the byte ranges of the files cut in more than one (a fast first pass).
    per_file: dict[str, int] = {}
    for c in chunks:
        per_file[c["path"]] = per_file.get(c["path"], 0) + 1
    multi = [c for c in chunks if per_file[c["path"]] > 1]
    if multi:
        count = ray.remote(num_cpus=1)(_count_newlines)
        before: dict[str, int] = {}
        for c, n in zip(multi, ray.get([count.remote(c["path"], c["start"], c["end"]) for c in multi])):
            c["newlines_before"] = before.get(c["path"], 0)
            before[c["path"]] = c["newlines_before"] + n
    return chunks


def _drop_duplicate_ids(out_dir: str, stats: dict, rejects: list[dict[str, str]]) -> None:
    """A second record with an id already written is set aside (the first one stays)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    for split in SPLITS:
        files, tables = [], []
        for n, (f, t) in enumerate(records.read_columns(out_dir, split, ["id", "task"])):
            files.append(f)
            tables.append(t.append_column("file", pa.array([n] * t.num_rows, pa.int32()))
                           .append_column("row", pa.array(range(t.num_rows), pa.int64())))
        if not tables:
            continue
        ids = pa.concat_tables(tables)
        counts = pc.value_counts(ids.column("id"))
        repeated = counts.filter(pc.greater(counts.field("counts"), 1)).field("values")
        if len(repeated) == 0:
            continue
        dup = ids.filter(pc.is_in(ids.column("id"), value_set=repeated)).sort_by([("file", "ascending"),
                                                                                 ("row", "ascending")])
        seen: set[str] = set()
        drop: dict[int, list[int]] = {}
        for rid, task, n, row in zip(*(dup.column(c).to_pylist() for c in ("id", "task", "file", "row"))):
            if rid not in seen:
                seen.add(rid)
                continue
            drop.setdefault(n, []).append(row)
            stats[task][split]["written"] -= 1
            stats[task][split]["rejected"] += 1
            rejects.append({"task": task, "split": split, "source": files[n],
                            "reason": f"duplicate record id {rid!r} (another line of the split has it)"})
        fs, _ = storage.filesystem(records.split_dir(out_dir, split))
        for n, rows in drop.items():
            with fs.open(files[n], "rb") as fh:
                pf = pq.ParquetFile(fh)
                groups = [pf.read_row_group(i) for i in range(pf.num_row_groups)]
            dropped, start = pa.array(rows, pa.int64()), 0
            with records.RecordFile(fs.unstrip_protocol(files[n])) as out:
                for group in groups:  # row group by row group: the sink's one task per row group stays so
                    at = pa.array(range(start, start + group.num_rows), pa.int64())
                    out.write(group.filter(pc.invert(pc.is_in(at, value_set=dropped))))
                    start += group.num_rows


def import_m3it(root: str, out_dir: str, tasks: list[str] | None = None, progress=True,
                chunk_bytes: int = 256 << 20) -> dict:
    """Read the M3IT layout under ``root`` into our records under ``out_dir`` (a Ray Data job).

    ``tasks`` keeps only those task keys (our keys, e.g. ``vqa-v2``); ``chunk_bytes``: the byte range
    one reader takes (a file larger than that is read by several in parallel). Returns
    ``{task: {split: {read, written, rejected}}}``; with ``progress`` one progress line is printed.
    """
    import ray
    import ray.data
    from ray.util.debug import log_once

    from ying.progress import ProgressLine

    from .split_writer import merge_reject_parts, write_split_records

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
        for old, new in f["superseded"]:
            log.info("m3it import: %s left aside; %s is the newer file of its split", old, new)
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be >= 1, got {chunk_bytes}")

    records.clear_records(out_dir)  # a re-import replaces, never mixes with, old shards
    chunks = _plan_chunks(folders, chunk_bytes)
    total_mb = max(1, sum(c["size"] for c in chunks) // 1_000_000)
    counter = ray.remote(num_cpus=0)(_BytesDone).remote()
    line = ProgressLine("m3it import", total=total_mb, unit="MB") if progress else None
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(2.0):
            try:
                line.set(ray.get(counter.get.remote(), timeout=5) // 1_000_000)
            except Exception:  # progress is best effort
                continue

    poller = threading.Thread(target=poll, name="m3it-progress", daemon=True) if line else None
    data_ctx = ray.data.DataContext.get_current()
    bars = data_ctx.enable_progress_bars
    data_ctx.enable_progress_bars = False  # our own progress line instead of bars with control codes
    log_once("ray_data_progress_manager_disabled")  # so Ray does not warn that we turned them off
    try:
        if poller:
            poller.start()
        ds = ray.data.from_items(chunks, override_num_blocks=len(chunks))
        ds = ds.map_batches(_read_chunks, fn_kwargs={"progress": counter}, batch_size=1, batch_format="pyarrow")
        stats = write_split_records(ds, out_dir)
    finally:
        stop.set()
        data_ctx.enable_progress_bars = bars
        if poller:
            poller.join(timeout=5)
        ray.kill(counter)
    if line:
        line.set(total_mb)
        line.finish()
    for task, splits in stats.items():
        for split, c in splits.items():
            if c["read"] != c["written"] + c["rejected"]:
                raise RuntimeError(f"m3it import lost lines of {task}/{split}: read {c['read']}, written "
                                   f"{c['written']}, rejected {c['rejected']}")
    duplicates: list[dict[str, str]] = []
    _drop_duplicate_ids(out_dir, stats, duplicates)
    merge_reject_parts(out_dir)
    if duplicates:
        fs, p = storage.filesystem(records.rejects_path(out_dir))
        with fs.open(p, "ab") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in duplicates).encode("utf-8"))
    return stats


def import_release(root: str, out_dir: str, wanted: list[str]) -> dict[str, Any]:
    """The DAG's unify step when ``data.m3it`` names a release: ``import_m3it`` of the release's tasks
    that are in ``wanted`` (``data.tasks``) plus every task Ying does not know (no adapter: those can
    be named nowhere else, so they train in Stage II and the report names them).

    Returns ``{"root", "stats", "imported", "unknown", "left_aside", "missing"}``: ``left_aside`` are
    known tasks of the release outside ``wanted``, ``missing`` are ``wanted`` tasks it lacks.
    """
    from .tasks import TASKS

    found = list(dict.fromkeys(f["task"] for f in find_task_folders(root)))
    wanted_set = set(wanted)
    unknown = sorted(t for t in found if t not in TASKS)
    imported = [t for t in found if t in wanted_set] + unknown
    left_aside = sorted(t for t in found if t in TASKS and t not in wanted_set)
    missing = [t for t in wanted if t not in found]
    if not imported:
        raise ValueError(f"the M3IT release at {root} has none of data.tasks ({', '.join(wanted)}); it has "
                         f"{', '.join(sorted(found)) or 'no task folders'}: set data.tasks to some of those")
    print(f"[ying] unify: importing {len(imported)} tasks of the M3IT release at {root}"
          + (f"; unknown to Ying (trained in Stage II, in no suite): {', '.join(unknown)}" if unknown else "")
          + (f"; not in data.tasks, left aside: {', '.join(left_aside)}" if left_aside else "")
          + (f"; in data.tasks but not in the release: {', '.join(missing)}" if missing else ""), flush=True)
    stats = import_m3it(root, out_dir, tasks=imported)
    return {"root": root, "stats": stats, "imported": imported, "unknown": unknown, "left_aside": left_aside,
            "missing": missing}


# -- export ---------------------------------------------------------------------------------------


def release_folder(task: str, category: str) -> tuple[str, str]:
    """(group, folder) of a task in the release; tasks it lacks go under their category's group."""
    if task in RELEASE_FOLDERS:
        return RELEASE_FOLDERS[task]
    return _CATEGORY_GROUP.get(category, category), task


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
    """Write our records under ``data_dir`` as the M3IT layout under ``out_root`` (streamed, one file at a time).

    Returns ``{task: {split: lines written}}``.
    """
    import pyarrow.parquet as pq

    from .instructions import load_pool
    from .tasks import TASKS

    wanted = None if tasks is None else set(tasks)
    out_fs, out_base = storage.filesystem(out_root)
    counts: dict[str, dict[str, int]] = {}
    folders: dict[str, tuple[str, str]] = {}
    used_instructions: dict[str, list[str]] = {}
    handles: dict[tuple[str, str], Any] = {}
    try:
        for split in SPLITS:
            fs, files = records.list_files(data_dir, split)
            for f in files:
                with fs.open(f, "rb") as fh:
                    for batch in pq.ParquetFile(fh).iter_batches(batch_size=256, columns=RECORD_SCHEMA.names):
                        for record in batch.to_pylist():
                            task = record["task"]
                            if wanted is not None and task not in wanted:
                                continue
                            group, folder = folders.setdefault(task, release_folder(task, record["category"]))
                            key = (task, split)
                            if key not in handles:
                                path = f"{out_base}/data/{group}/{folder}"
                                out_fs.makedirs(path, exist_ok=True)
                                handles[key] = out_fs.open(f"{path}/{EXPORT_SPLIT_FILES[split]}", "wb")
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
    for task, (group, folder) in folders.items():
        pool = load_pool(task) if task in TASKS else used_instructions[task]
        text = json.dumps(pool, ensure_ascii=False, indent=2).encode("utf-8")
        storage.write_bytes_atomic(storage.join(out_root, "data", group, folder, "instructions.json"), text)
    return counts
