"""Small helpers shared by the adapters: reading source files without ever raising."""

from __future__ import annotations

import csv
import io
import json
from typing import Any, Iterator

from ... import storage
from ..schema import Reject

__all__ = ["SourceFileError", "load_json", "read_bytes", "list_names", "FolderIndex", "json_lines", "csv_rows"]


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


def json_lines(task: str, split: str, path: str) -> Iterator[tuple[str, Any] | Reject]:
    """``(path:line, object)`` per non-empty line of a JSON-lines file; a Reject for a line (or a
    whole file) that can't be read, so one bad line never stops the rest."""
    try:
        raw = read_bytes(path)
    except SourceFileError as e:
        yield Reject(task, split, path, str(e))
        return
    for n, line in enumerate(raw.splitlines(), start=1):
        where = f"{path}:{n}"
        if not line.strip():
            continue
        try:
            yield where, json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as e:
            yield Reject(task, split, where, f"line is not UTF-8: {e}")
        except json.JSONDecodeError as e:
            yield Reject(task, split, where, f"line is not valid JSON: {e}")


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
