"""M3IT interop: import the released layout, export ours into it, and round-trip.

The fixture is written here in the release's layout (data/<group>/<task>/instructions.json and
split JSONL files, with the key variants seen across its tasks)."""

import base64
import hashlib
import io
import json
import os

import pyarrow.parquet as pq
import pytest
from PIL import Image

from ying.cli import main
from ying.data.build import read_records, read_rejects
from ying.data.instructions import load_pool
from ying.data.m3it import export_m3it, import_m3it
from ying.data.schema import RECORD_SCHEMA, SPLITS


def _image(key: str, fmt="JPEG") -> bytes:
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:3], "big")
    buf = io.BytesIO()
    Image.new("RGB", (10, 8), (h % 256, h // 256 % 256, h // 65536 % 256)).save(buf, format=fmt)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _write_task(root, group, folder, files, instructions=("Answer it.",), instructions_name="instructions.json"):
    d = os.path.join(root, "data", group, folder)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, instructions_name), "w", encoding="utf-8") as f:
        json.dump(list(instructions), f, ensure_ascii=False)
    for name, lines in files.items():
        with open(os.path.join(d, name), "wb") as f:
            for line in lines:
                f.write(line if isinstance(line, bytes) else (json.dumps(line, ensure_ascii=False) + "\n").encode())


IMG = {k: _image(k) for k in ("v0", "v1", "v2", "m0", "c0", "n0", "n1")}
FRAMES = [_image(f"frame{k}", "PNG") for k in range(8)]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("m3it"))
    # vqa-v2 lives in folder "vqav2"; val.jsonl; meta with an id, an unknown top-level key.
    _write_task(root, "vqa", "vqav2", {
        "train.jsonl": [
            {"instruction": "Answer the question.", "inputs": "What color is the bus?", "outputs": "The bus is red.",
             "image_base64_str": [b64(IMG["v0"])], "meta": {"id": 4711, "answers": ["red", "red"]},
             "question_id": 9},
            {"instruction": "Answer the question.", "input": "How many dogs?", "output": "Two dogs.",  # input/output keys
             "image_base64": b64(IMG["v1"])},  # a single string, other key name
            b"{not json\n",
            {"instruction": "Answer the question.", "inputs": "Q?", "outputs": "",  # empty output
             "image_base64_str": [b64(IMG["v2"])]},
            b"\n",  # a blank line is not a record
            {"instruction": "Answer the question.", "inputs": "Q?", "outputs": "A.",
             "image_base64_str": ["@@@not base64@@@"]},
        ],
        "val.jsonl": [
            {"instruction": "Answer the question.", "inputs": "Where?", "outputs": "In a park.",
             "image_base64_str": [b64(IMG["v2"])], "meta": json.dumps({"image_id": 3})},  # meta as a JSON string
            {"instruction": "Answer the question.", "inputs": "Q?", "outputs": "A.",
             "image_base64_str": [b64(b"this is not an image")]},
        ],
    })
    # mocheg: prefixed split file names, the singular instruction.json.
    _write_task(root, "classification", "mocheg", {
        "mocheg_test.jsonl": [{"instruction": "Is the claim supported?", "inputs": "Claim: x", "outputs": "(A) Supported",
                               "image_base64_str": [b64(IMG["m0"])]}],
    }, instructions_name="instruction.json")
    # coco-cn: Chinese, non-UTF-8 bytes on one line.
    _write_task(root, "captioning", "coco-cn", {
        "test.jsonl": [
            {"instruction": "请描述这张图片。", "inputs": "", "outputs": "一只猫坐在沙发上。", "image_base64_str": [b64(IMG["c0"])]},
            b'{"instruction": "\xff\xfe bad", "outputs": "x"}\n',
        ],
    })
    # msrvtt-qa: a video as its 8 frames, in order.
    _write_task(root, "vqa", "msrvtt-qa", {
        "test.jsonl": [{"instruction": "Answer about the video.", "inputs": "What is the man doing?",
                        "outputs": "He is cooking.", "image_base64_str": [b64(f) for f in FRAMES]}],
    })
    # A task our registry does not know: category from its group folder, language from its text.
    _write_task(root, "reasoning", "new-puzzle", {
        "train.jsonl": [{"instruction": "Solve it.", "inputs": "", "outputs": "Left.", "image_base64_str": [b64(IMG["n0"])]},
                        {"instruction": "Solve the puzzle.", "inputs": "", "outputs": "Right.",
                         "image_base64_str": [b64(IMG["n1"])], "meta": "free text meta"}],
    }, instructions=("Solve it.", "Solve the puzzle."))
    return root


@pytest.fixture(scope="module")
def imported(release, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("imported"))
    stats = import_m3it(release, out, progress=None)
    return out, stats


def _all(out):
    return {r["id"]: r for split in SPLITS for r in read_records(out, split)}


def test_counts_reconcile_and_each_bad_line_has_a_reason_naming_file_and_line(imported, release):
    out, stats = imported
    assert stats["vqa-v2"]["train"] == {"read": 5, "written": 2, "rejected": 3}
    assert stats["vqa-v2"]["validation"] == {"read": 2, "written": 1, "rejected": 1}
    assert stats["coco-cn"]["test"] == {"read": 2, "written": 1, "rejected": 1}
    assert stats["mocheg"]["test"]["written"] == 1 and stats["new-puzzle"]["train"]["written"] == 2
    rejects = read_rejects(out)
    assert len(rejects) == sum(c["rejected"] for s in stats.values() for c in s.values()) == 5
    by_where = {r["source"].rsplit("/", 1)[1]: r["reason"] for r in rejects}
    assert "not JSON" in by_where["train.jsonl:3"]
    assert "empty output" in by_where["train.jsonl:4"]
    assert "not valid base64" in by_where["train.jsonl:6"]
    assert "does not decode" in by_where["val.jsonl:2"]
    assert "not UTF-8" in by_where["test.jsonl:2"]
    written = sum(c["written"] for s in stats.values() for c in s.values())
    assert len(_all(out)) == written == 8


def test_records_field_by_field(imported):
    out, _ = imported
    recs = _all(out)
    r = recs["vqa-v2-train-4711"]  # id from meta.id
    assert (r["task"], r["category"], r["lang"], r["split"]) == ("vqa-v2", "vqa", "en", "train")
    assert r["images"] == [IMG["v0"]]  # bytes unchanged
    assert (r["instruction"], r["inputs"], r["outputs"]) == ("Answer the question.", "What color is the bus?",
                                                               "The bus is red.")
    assert json.loads(r["meta"]) == {"id": 4711, "answers": ["red", "red"], "m3it_extra": {"question_id": 9},
                                     "source_id": "4711"}
    r = recs["vqa-v2-train-1"]  # id from the line index; input/output keys; one base64 string
    assert (r["inputs"], r["outputs"], r["images"]) == ("How many dogs?", "Two dogs.", [IMG["v1"]])
    assert json.loads(recs["vqa-v2-validation-0"]["meta"]) == {"image_id": 3, "source_id": "0"}
    r = recs["coco-cn-test-0"]
    assert (r["category"], r["lang"], r["outputs"]) == ("chinese", "zh", "一只猫坐在沙发上。")
    assert recs["mocheg-test-0"]["category"] == "classification"
    assert recs["msrvtt-qa-test-0"]["images"] == FRAMES and recs["msrvtt-qa-test-0"]["category"] == "video"
    r = recs["new-puzzle-train-1"]
    assert (r["category"], r["lang"]) == ("reasoning", "en")
    assert json.loads(r["meta"]) == {"m3it_meta": "free text meta", "source_id": "1"}


def test_parquet_loads_with_hf_datasets(imported, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    out, _ = imported
    files = sorted(os.path.join(out, "records", "train", f) for f in os.listdir(os.path.join(out, "records", "train")))
    assert all(pq.read_schema(f).remove_metadata() == RECORD_SCHEMA for f in files)
    ds = datasets.load_dataset("parquet", data_files={"train": files}, cache_dir=str(tmp_path / "hf"))["train"]
    assert ds.num_rows == 4 and ds.column_names == RECORD_SCHEMA.names
    row = {r["id"]: r for r in ds}["vqa-v2-train-4711"]
    assert row["images"] == [IMG["v0"]] and row["outputs"] == "The bus is red."


def test_export_writes_the_release_layout(imported, tmp_path):
    out, _ = imported
    dst = str(tmp_path / "export")
    counts = export_m3it(out, dst, progress=None)
    assert counts["vqa-v2"] == {"train": 2, "validation": 1}
    folder = os.path.join(dst, "data", "vqa", "vqa-v2")
    assert sorted(os.listdir(folder)) == ["instructions.json", "train.jsonl", "val.jsonl"]
    assert json.load(open(os.path.join(folder, "instructions.json"))) == load_pool("vqa-v2")  # our pool
    lines = [json.loads(l) for l in open(os.path.join(folder, "train.jsonl"))]
    first = next(l for l in lines if l["meta"].get("source_id") == "4711")
    assert base64.b64decode(first["image_base64_str"][0]) == IMG["v0"]
    assert first["question_id"] == 9 and "m3it_extra" not in first["meta"]  # back at the top level
    assert (first["instruction"], first["inputs"], first["outputs"]) == ("Answer the question.",
                                                                         "What color is the bus?", "The bus is red.")
    unknown = os.path.join(dst, "data", "reasoning", "new-puzzle", "instructions.json")
    assert json.load(open(unknown)) == ["Solve it.", "Solve the puzzle."]  # no pool of ours: the ones used


def test_import_export_import_gives_the_same_records(imported, tmp_path):
    out, _ = imported
    dst = str(tmp_path / "export")
    export_m3it(out, dst, progress=None)
    again = str(tmp_path / "again")
    stats = import_m3it(dst, again, progress=None)
    assert all(c["rejected"] == 0 for s in stats.values() for c in s.values())
    first, second = _all(out), _all(again)
    assert sorted(first) == sorted(second)
    for rid, rec in first.items():
        for field in RECORD_SCHEMA.names:
            assert second[rid][field] == rec[field], (rid, field)


def test_tasks_filter_and_clear_errors(release, tmp_path):
    out = str(tmp_path / "only")
    stats = import_m3it(release, out, tasks=["mocheg"], progress=None)
    assert list(stats) == ["mocheg"]
    with pytest.raises(ValueError, match="not under"):
        import_m3it(release, out, tasks=["nope"], progress=None)
    with pytest.raises(FileNotFoundError):
        import_m3it(str(tmp_path / "missing"), out, progress=None)


def test_cli_import_and_export(release, tmp_path, capsys):
    out, dst = str(tmp_path / "cli-in"), str(tmp_path / "cli-out")
    main(["m3it", "import", release, "--out", out])
    assert "read 13 lines: 8 records written, 5 rejected" in capsys.readouterr().out
    main(["m3it", "export", "--data-dir", out, "--out", dst, "--tasks", "coco-cn"])
    assert "exported 1 records of 1 tasks" in capsys.readouterr().out
    line = json.loads(open(os.path.join(dst, "data", "chinese", "coco-cn", "test.jsonl"), encoding="utf-8").read())
    assert line["outputs"] == "一只猫坐在沙发上。"
    with pytest.raises(SystemExit):
        main(["m3it", "import", str(tmp_path / "missing"), "--out", out])


def test_our_built_records_export_and_reimport_byte_for_byte(tmp_path):
    """Records as the build writes them (meta keys in build order, nested provenance) survive
    export -> import unchanged, field by field, ids included."""
    import pyarrow as pa

    meta = {"boxes": [[1, 2, 3, 4]], "original_answer": "2", "source": "/src/a.json#[0]", "source_id": "q17",
            "rephrase": {"status": "template", "provider": "template"}}
    records = [
        {"id": "vqa-v2-train-q17", "task": "vqa-v2", "category": "vqa", "lang": "en", "split": "train",
         "images": [_image("b0")], "instruction": load_pool("vqa-v2")[3], "inputs": "How many?",
         "outputs": "There are 2.", "meta": json.dumps(meta)},
        {"id": "msvd-qa-test-7", "task": "msvd-qa", "category": "video", "lang": "en", "split": "test",
         "images": FRAMES, "instruction": load_pool("msvd-qa")[0], "inputs": "Who?", "outputs": "A dog.",
         "meta": json.dumps({"frames": 8, "source_id": "7"})},
    ]
    src = str(tmp_path / "built")
    for rec in records:
        d = os.path.join(src, "records", rec["split"])
        os.makedirs(d, exist_ok=True)
        pq.write_table(pa.Table.from_pylist([rec], schema=RECORD_SCHEMA), os.path.join(d, "part-0.parquet"))
    export_m3it(src, str(tmp_path / "m3it"), progress=None)
    import_m3it(str(tmp_path / "m3it"), str(tmp_path / "back"), progress=None)
    back = _all(str(tmp_path / "back"))
    assert back == {r["id"]: r for r in records}
