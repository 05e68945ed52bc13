"""Small helpers shared by the adapters: reading source files without ever raising.

Big annotation files (VQA v2, GQA, COCO instances, CLEVR, VisDial: hundreds of MB to GBs) are read
as streams: ``json_items`` and ``json_members`` hand out one array item or object member at a time
(ijson, with its C backend where installed), and ``json_lines`` one line at a time, so no process
holds a whole file. ``load_json`` stays for small files (split lists, label maps).
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any, Iterator

from ... import storage
from ..schema import Reject

__all__ = ["SourceFileError", "load_json", "read_bytes", "list_names", "FolderIndex", "json_lines", "json_items",
           "json_members", "csv_rows", "dialog_inputs"]


class SourceFileError(Exception):
    """A whole source file can't be used; adapters turn it into one Reject."""


def read_bytes(path: str) -> bytes:
    fs, p = storage.filesystem(path)
    try:
        with fs.open(p, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise SourceFileError(f"missing file {path}") from None
    except OSError as e:
        raise SourceFileError(f"can't read {path}: {e}") from None


def load_json(path: str) -> Any:
    raw = read_bytes(path)
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise SourceFileError(f"{path} is not UTF-8: {e}") from None
    except json.JSONDecodeError as e:
        raise SourceFileError(f"{path} is not valid JSON: {e}") from None


def list_names(folder: str) -> set[str]:
    """Names of the files directly in ``folder`` (one listing call, cheap on object stores too)."""
    fs, p = storage.filesystem(folder)
    try:
        return {e.rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(p, detail=False)}
    except (FileNotFoundError, NotADirectoryError):
        return set()


class FolderIndex:
    """"Is this file there?" with one listing per folder, however many records ask.

    Releases hold thousands of images per folder; listing a folder once is far cheaper than a
    stat per record, above all on object stores.
    """

    def __init__(self) -> None:
        self._names: dict[str, set[str]] = {}

    def has(self, folder: str, name: str) -> bool:
        if folder not in self._names:
            self._names[folder] = list_names(folder)
        return name in self._names[folder]


def _open(path: str):
    fs, p = storage.filesystem(path)
    try:
        return fs.open(p, "rb")
    except FileNotFoundError:
        raise SourceFileError(f"missing file {path}") from None
    except OSError as e:
        raise SourceFileError(f"can't read {path}: {e}") from None


def json_lines(task: str, split: str, path: str) -> Iterator[tuple[str, Any] | Reject]:
    """``(path:line, object)`` per non-empty line of a JSON-lines file, read a line at a time; a
    Reject for a line (or a whole file) that can't be read, so one bad line never stops the rest."""
    try:
        f = _open(path)
    except SourceFileError as e:
        yield Reject(task, split, path, str(e))
        return
    with f:
        n = 0
        try:
            for n, line in enumerate(f, start=1):
                where = f"{path}:{n}"
                if not line.strip():
                    continue
                try:
                    yield where, json.loads(line.decode("utf-8"))
                except UnicodeDecodeError as e:
                    yield Reject(task, split, where, f"line is not UTF-8: {e}")
                except json.JSONDecodeError as e:
                    yield Reject(task, split, where, f"line is not valid JSON: {e}")
        except OSError as e:
            yield Reject(task, split, f"{path}:{n + 1}", f"can't read {path}: {e}")


def _one_line(error: Exception) -> str:
    """ijson's messages span lines (and yajl's come as bytes): one line for a reject reason."""
    arg = error.args[0] if error.args else error
    text = arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(error)
    return " ".join(text.split())


def _stream(task: str, split: str, path: str, prefix: str, members: bool) -> Iterator[tuple[Any, Any] | Reject]:
    """(key or index, value) of the array items (or object members) at ``prefix``, then nothing; a
    Reject instead where the file is missing, stops being valid JSON (items before that point are
    kept) or has no array (object) at ``prefix``."""
    import ijson

    kind = "object" if members else "array"
    label = prefix or "the top level"
    try:
        f = _open(path)
    except SourceFileError as e:
        yield Reject(task, split, path, str(e))
        return
    n = 0
    with f:
        try:
            if members:
                stream = ijson.kvitems(f, prefix, use_float=True)
            else:
                stream = enumerate(ijson.items(f, f"{prefix}.item" if prefix else "item", use_float=True))
            for key, value in stream:
                n += 1
                yield key, value
        except (ijson.JSONError, UnicodeDecodeError, ValueError) as e:
            after = f" after {n} entries of {label}" if n else ""
            yield Reject(task, split, path, f"{path} is not valid JSON{after}: {_one_line(e)}")
            return
        except OSError as e:
            yield Reject(task, split, path, f"can't read {path}: {e}")
            return
    if n == 0:
        # Nothing came out: an empty container, or none at all. Tell the two apart (one more pass,
        # paid only for empty results) so a file of the wrong shape never passes as an empty split.
        start = "start_map" if members else "start_array"
        try:
            with _open(path) as f:
                found = any(p == prefix and event == start for p, event, _ in ijson.parse(f))
        except Exception:  # it parsed a moment ago; if it no longer does, say so below
            found = False
        if not found:
            yield Reject(task, split, path, f"{path} has no JSON {kind} at {label!r}")


def json_items(task: str, split: str, path: str, prefix: str = "") -> Iterator[tuple[str, Any] | Reject]:
    """``("<path>#<prefix>[i]", item)`` per item of the JSON array at ``prefix`` (dotted keys,
    e.g. ``"questions"`` or ``"data.dialogs"``; ``""`` for a top-level array), streamed: one item in
    memory at a time, whatever the file's size. A Reject where the file is missing, is not valid JSON
    (items before the error are kept) or has no array there."""
    for entry in _stream(task, split, path, prefix, members=False):
        if isinstance(entry, Reject):
            yield entry
        else:
            i, item = entry
            yield f"{path}#{prefix}[{i}]", item


def json_members(task: str, split: str, path: str, prefix: str = "") -> Iterator[tuple[str, Any] | Reject]:
    """``(key, value)`` per member of the JSON object at ``prefix`` (``""``: the top-level object, as
    GQA's question files keyed by question id), streamed like ``json_items``."""
    yield from _stream(task, split, path, prefix, members=True)


def csv_rows(path: str, required: set[str]) -> list[dict[str, str]]:
    """A CSV file with a header as dicts (BOM tolerated); SourceFileError if it isn't UTF-8 CSV
    with the ``required`` columns. Whole-file decoding: quoted fields may hold line breaks."""
    try:
        text = read_bytes(path).decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SourceFileError(f"{path} is not UTF-8: {e}") from None
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = list(reader)
    except csv.Error as e:
        raise SourceFileError(f"{path} is not valid CSV: {e}") from None
    missing = required - set(reader.fieldnames or [])
    if missing:
        raise SourceFileError(f"{path} lacks columns {sorted(missing)}")
    return rows


def dialog_inputs(history: list[tuple[str, str]], question: str, caption: str | None = None) -> str:
    """A dialogue turn's ``inputs``: the caption (where the source has one), the earlier rounds as
    ``Q:``/``A:`` pairs under "Dialog so far:", then the current question. One layout for every
    dialogue source (VisDial, LLaVA), so a model reads one shape of history whatever the task::

        Caption: two shapes on a grey background
        Dialog so far:
        Q: what color is the circle
        A: it is red
        Question: is there a star
    """
    lines = [f"Caption: {caption}"] if caption is not None else []
    if history:
        lines.append("Dialog so far:")
        lines += [f"Q: {q}\nA: {a}" for q, a in history]
    lines.append(f"Question: {question}")
    return "\n".join(lines)
