"""ChineseFoodNet (Chen et al., 2017), 208 dishes: the dataset folder holds the class-name sheet
``class_names.xlsx`` (first sheet, no header; columns: label index, Chinese name, English name)
and ``release_data/`` with the lists ``train_list.txt`` / ``val_list.txt`` (``<class>/<file>.jpg
<label>`` per line, images under ``train/`` and ``val/``) and ``test_truth_list.txt``
(``<file>.jpg <label>``, images under ``test/``; ``test_list.txt`` has no labels).

Raw list line: ``000/000085.jpg 0``; class row: ``0 | 巴旦木 | almond``.

The model picks the dish from a reduced lettered option list of Chinese names that always holds
the gold one (``选项：(A) ... (B) ...``); the output is ``(X) <Chinese name>``.
"""

from __future__ import annotations

import io
import re
import zipfile
from typing import Iterator
from xml.etree import ElementTree

from ... import storage
from ..schema import Reject, SourceInstance
from . import TaskSpec
from ._common import SourceFileError, FolderIndex, read_bytes
from ._options import answer_with_letter, format_options, reduced_options

SPEC = TaskSpec(key="chinese-food", category="chinese", lang="zh", splits=("train", "validation", "test"), rephrase=False)

CLASS_FILE = "class_names.xlsx"
RELEASE_DIR = "release_data"
_LIST = {"train": ("train_list.txt", "train"), "validation": ("val_list.txt", "val"), "test": ("test_truth_list.txt", "test")}
MAX_OPTIONS = 10
OPTION_PREFIX = "选项："

_NS = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"


def _cell_column(ref: str) -> int:
    col = 0
    for ch in re.match(r"[A-Z]+", ref).group(0):
        col = col * 26 + ord(ch) - 64
    return col - 1


def read_xlsx_rows(data: bytes) -> list[list[str]]:
    """The first sheet's rows as text, read with the standard library (xlsx is zipped XML)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            names = z.namelist()
            shared: list[str] = []
            if "xl/sharedStrings.xml" in names:
                for si in ElementTree.fromstring(z.read("xl/sharedStrings.xml")).iter(f"{_NS}si"):
                    shared.append("".join(t.text or "" for t in si.iter(f"{_NS}t")))
            sheets = sorted(n for n in names if re.fullmatch(r"xl/worksheets/sheet\d+\.xml", n))
            if not sheets:
                raise SourceFileError("no worksheet in the workbook")
            sheet = ElementTree.fromstring(z.read("xl/worksheets/sheet1.xml" if "xl/worksheets/sheet1.xml" in names else sheets[0]))
    except (zipfile.BadZipFile, ElementTree.ParseError, KeyError) as e:
        raise SourceFileError(f"not a readable .xlsx workbook: {e}") from None
    rows: list[list[str]] = []
    for row in sheet.iter(f"{_NS}row"):
        cells: dict[int, str] = {}
        for c in row.iter(f"{_NS}c"):
            kind, v = c.get("t"), c.find(f"{_NS}v")
            if kind == "s" and v is not None:
                text = shared[int(v.text)]
            elif kind == "inlineStr":
                text = "".join(t.text or "" for t in c.iter(f"{_NS}t"))
            else:
                text = v.text if v is not None and v.text is not None else ""
            cells[_cell_column(c.get("r", "A"))] = text.strip()
        if cells:
            rows.append([cells.get(i, "") for i in range(max(cells) + 1)])
    return rows


def _load_classes(path: str) -> dict[int, tuple[str, str]]:
    classes: dict[int, tuple[str, str]] = {}
    for row in read_xlsx_rows(read_bytes(path)):
        if len(row) < 3:
            continue
        try:
            index = int(float(row[0]))
        except ValueError:
            continue  # a header row, if any
        classes[index] = (row[1], row[2])
    if not classes:
        raise SourceFileError(f"{path}: no '<index> <Chinese name> <English name>' rows")
    return classes


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    if split not in _LIST:
        raise ValueError(f"chinese-food has splits {SPEC.splits}; got {split!r}")
    list_name, image_dir = _LIST[split]
    class_path = storage.join(root, CLASS_FILE)
    list_path = storage.join(root, RELEASE_DIR, list_name)
    try:
        classes = _load_classes(class_path)
        list_bytes = read_bytes(list_path)
    except SourceFileError as e:
        yield Reject(SPEC.key, split, f"{class_path} + {list_path}", str(e))
        return
    zh_names = sorted({zh for zh, _ in classes.values()})
    present = FolderIndex()  # one listing per image folder
    for n, raw_line in enumerate(list_bytes.splitlines(), start=1):
        where = f"{list_path}:{n}"
        try:
            line = raw_line.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            yield Reject(SPEC.key, split, where, f"line is not UTF-8: {e}")
            continue
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            yield Reject(SPEC.key, split, where, "expected '<image path> <label index>'")
            continue
        rel, label = parts[0], int(parts[1])
        if label not in classes:
            yield Reject(SPEC.key, split, where, f"label {label} is not in {CLASS_FILE}")
            continue
        folder, _, filename = f"{image_dir}/{rel}".rpartition("/")
        if not present.has(storage.join(root, RELEASE_DIR, folder), filename):
            yield Reject(SPEC.key, split, where, f"missing image file {RELEASE_DIR}/{folder}/{filename}")
            continue
        zh, en = classes[label]
        source_id = rel.rsplit(".", 1)[0].replace("/", "-")
        options = reduced_options(SPEC.key, source_id, zh, zh_names, MAX_OPTIONS)
        yield SourceInstance(
            task=SPEC.key,
            split=split,
            source_id=source_id,
            source=where,
            inputs=format_options(options, prefix=OPTION_PREFIX),
            outputs=answer_with_letter(options, zh),
            image_paths=[storage.join(root, RELEASE_DIR, folder, filename)],
            meta={"image": f"{folder}/{filename}", "label": label, "label_zh": zh, "label_en": en, "options": options},
        )
