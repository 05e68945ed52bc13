"""M3IT interop: import the released layout (a Ray Data job), export ours into it, and round-trip.

The fixture is written here in the release's layout as read on the Hub (see ying/data/m3it.py):
data/<group>/<folder>/ with instructions.json and split files, in its three line layouts (flat,
rephrased: the instance under ``meta`` and the rewrite in ``answer``, raw: question / answer /
original_answer / paraphrased_answer with image / images / img_str), beside the older files the
newer ones supersede (train.jsonl < train_v2.jsonl < train_2023-10-07.jsonl)."""

import base64
import hashlib
import io
import json
import os

import pyarrow.parquet as pq
import pytest
from PIL import Image

from ying.cli import main
from ying.data.records import read_records, read_rejects
from ying.data.instructions import load_pool
from ying.data.m3it import RELEASE_FOLDERS, RELEASE_GROUPS, export_m3it, find_task_folders, import_m3it
from ying.data.schema import RECORD_SCHEMA, SPLITS
from ying.data.tasks import TASKS


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
    if instructions is not None:
        with open(os.path.join(d, instructions_name), "w", encoding="utf-8") as f:
            json.dump(list(instructions), f, ensure_ascii=False)
    for name, lines in files.items():
        with open(os.path.join(d, name), "wb") as f:
            for line in lines:
                f.write(line if isinstance(line, bytes) else (json.dumps(line, ensure_ascii=False) + "\n").encode())


IMG = {k: _image(k) for k in ("v0", "v1", "v2", "m0", "m1", "c0", "n0", "n1", "k0", "k1", "k2", "r0", "a0",
                              "f0", "s0", "old")}
FRAMES = [_image(f"frame{k}", "PNG") for k in range(8)]
OKVQA_POOL = ["Answer the question using outside knowledge.", "Use what you know to answer.", "Explain and answer."]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("m3it"))
    # -- the flat layout ------------------------------------------------------------------------
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
    # mocheg: prefixed split file names, the singular instruction.json; two lines with one id.
    _write_task(root, "classification", "mocheg", {
        "mocheg_test.jsonl": [
            {"instruction": "Is the claim supported?", "inputs": "Claim: x", "outputs": "(A) Supported",
             "image_base64_str": [b64(IMG["m0"])], "meta": {"id": 5}},
            {"instruction": "Is the claim supported?", "inputs": "Claim: y", "outputs": "(B) Refuted",
             "image_base64_str": [b64(IMG["m1"])], "meta": {"id": 5}},
        ],
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
    # Folder names that are not the config names.
    _write_task(root, "classification", "chinesefoodnet-10", {
        "test.jsonl": [{"instruction": "这是什么菜？", "inputs": "", "outputs": "饺子", "image_base64_str": [b64(IMG["f0"])]}],
    })
    _write_task(root, "reasoning", "science_qa", {
        "val.jsonl": [{"instruction": "Pick one.", "inputs": "Which is pink?\n(A) sky (B) flower",
                       "outputs": "(B) flower", "image_base64_str": [b64(IMG["s0"])]}],
    })
    # A task our registry does not know: category from its group folder, language from its text.
    _write_task(root, "reasoning", "new-puzzle", {
        "train.jsonl": [{"instruction": "Solve it.", "inputs": "", "outputs": "Left.", "image_base64_str": [b64(IMG["n0"])]},
                        {"instruction": "Solve the puzzle.", "inputs": "", "outputs": "Right.",
                         "image_base64_str": [b64(IMG["n1"])], "meta": "free text meta"}],
    }, instructions=("Solve it.", "Solve the puzzle."))
    # -- the rephrased layout, in the dated file that supersedes train.jsonl ----------------------------
    _write_task(root, "reasoning", "clevr", {
        "train.jsonl": [{"instruction": "Old.", "inputs": "How many cubes?", "outputs": "2",
                         "image_base64_str": [b64(IMG["old"])]}],
        "train_2023-10-07.jsonl": [
            {"meta": {"instruction": "Answer the question.", "inputs": "How many cubes?", "outputs": "2",
                      "image_base64_str": [b64(IMG["r0"])], "meta": {"question_index": 5}},
             "answer": "There are two cubes in the scene."},
            {"meta": {"instruction": "Answer the question.", "inputs": "Any spheres?", "outputs": "no",
                      "image_base64_str": [b64(IMG["r0"])]}},  # no rewritten answer
        ],
    })
    # -- the raw layout: question / answers / images, instructions from the folder's pool -------------
    _write_task(root, "vqa", "okvqa", {
        "train.jsonl": [{"question": "Old?", "answer": "old", "image_str": b64(IMG["old"])}],
        "train_v2.jsonl": [
            {"question": "What sport is this?", "original_answer": "tennis",
             "paraphrased_answer": "The people in the picture are playing tennis.", "img_str": b64(IMG["k0"])},
            {"question": "Who made this phone?", "original_answer": "apple",
             "paraphrased_answer": "Sorry, I cannot determine that from the image.", "images": [b64(IMG["k1"])]},
            {"question": "What is flying?", "answer": "a kite", "image": b64(IMG["k2"]), "id": "q77"},
            {"question": "No picture?", "answer": "none"},
        ],
    }, instructions=OKVQA_POOL)
    _write_task(root, "vqa", "a-okvqa", {
        "val.jsonl": [{"question": "What keeps her dry?", "answer": "umbrella", "rationale": "It is raining.",
                       "image_base64_str": b64(IMG["a0"])}],
    })
    _write_task(root, "vqa", "gqa", {  # raw lines, and no instructions.json to draw from
        "train.jsonl": [{"question": "Is it blue?", "answer": "yes", "img_str": b64(IMG["a0"])}],
    }, instructions=None)
    return root


@pytest.fixture(scope="module")
def imported(release, tmp_path_factory, ray_cluster):
    out = str(tmp_path_factory.mktemp("imported"))
    stats = import_m3it(release, out, progress=None)
    return out, stats


def _all(out):
    return {r["id"]: r for split in SPLITS for r in read_records(out, split)}


def test_the_release_tree_the_tables_know():
    # every task of the paper's 40 has its place in the release (LAION and LLaVA, outside Stage II's mix, have none)
    assert set(RELEASE_FOLDERS) == {t for t, m in TASKS.items() if m.SPEC.stage2_mix}
    assert {group for group, _ in RELEASE_FOLDERS.values()} == set(RELEASE_GROUPS)


def test_the_newest_file_of_each_split_is_read_and_the_rest_named(release):
    folders = {f["task"]: f for f in find_task_folders(release)}
    assert [p.rsplit("/", 1)[1] for p in folders["clevr"]["splits"]["train"]] == ["train_2023-10-07.jsonl"]
    assert [p.rsplit("/", 1)[1] for p in folders["okvqa"]["splits"]["train"]] == ["train_v2.jsonl"]
    assert [(a.rsplit("/", 1)[1], b.rsplit("/", 1)[1]) for a, b in folders["okvqa"]["superseded"]] == [
        ("train.jsonl", "train_v2.jsonl")]
    assert folders["chinese-food"]["group"] == "classification" and "science-qa" in folders


def test_counts_reconcile_and_each_bad_line_has_a_reason_naming_file_and_line(imported):
    out, stats = imported
    assert stats["vqa-v2"]["train"] == {"read": 5, "written": 2, "rejected": 3}
    assert stats["vqa-v2"]["validation"] == {"read": 2, "written": 1, "rejected": 1}
    assert stats["coco-cn"]["test"] == {"read": 2, "written": 1, "rejected": 1}
    assert stats["mocheg"]["test"] == {"read": 2, "written": 1, "rejected": 1}  # the second id 5
    assert stats["clevr"]["train"] == {"read": 2, "written": 1, "rejected": 1}  # the old train.jsonl is not read
    assert stats["okvqa"]["train"] == {"read": 4, "written": 3, "rejected": 1}
    assert stats["gqa"]["train"] == {"read": 1, "written": 0, "rejected": 1}
    assert stats["new-puzzle"]["train"]["written"] == 2
    rejects = read_rejects(out)
    assert len(rejects) == sum(c["rejected"] for s in stats.values() for c in s.values()) == 9
    assert all(c["read"] == c["written"] + c["rejected"] for s in stats.values() for c in s.values())
    by_where = {r["source"].rsplit("/", 2)[1] + "/" + r["source"].rsplit("/", 1)[1]: r["reason"] for r in rejects}
    assert "not JSON" in by_where["vqav2/train.jsonl:3"]
    assert "empty output" in by_where["vqav2/train.jsonl:4"]
    assert "not valid base64" in by_where["vqav2/train.jsonl:6"]
    assert "does not decode" in by_where["vqav2/val.jsonl:2"]
    assert "not UTF-8" in by_where["coco-cn/test.jsonl:2"]
    assert "missing field 'answer'" in by_where["clevr/train_2023-10-07.jsonl:2"]
    assert "missing images" in by_where["okvqa/train_v2.jsonl:4"]
    assert "no instruction" in by_where["gqa/train.jsonl:1"]
    assert any("duplicate record id 'mocheg-test-5'" in r["reason"] for r in rejects)
    written = sum(c["written"] for s in stats.values() for c in s.values())
    assert len(_all(out)) == written == 15


def test_flat_records_field_by_field(imported):
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
    assert recs["mocheg-test-5"]["category"] == "classification" and recs["mocheg-test-5"]["inputs"] == "Claim: x"
    assert recs["msrvtt-qa-test-0"]["images"] == FRAMES and recs["msrvtt-qa-test-0"]["category"] == "video"
    assert (recs["chinese-food-test-0"]["category"], recs["chinese-food-test-0"]["lang"]) == ("chinese", "zh")
    assert recs["science-qa-validation-0"]["outputs"] == "(B) flower"
    r = recs["new-puzzle-train-1"]
    assert (r["category"], r["lang"]) == ("reasoning", "en")
    assert json.loads(r["meta"]) == {"m3it_meta": "free text meta", "source_id": "1"}


def test_rephrased_layout_takes_the_instance_from_meta_and_the_rewrite_from_answer(imported):
    out, _ = imported
    r = _all(out)["clevr-train-0"]
    assert (r["instruction"], r["inputs"], r["outputs"]) == ("Answer the question.", "How many cubes?",
                                                               "There are two cubes in the scene.")
    assert r["images"] == [IMG["r0"]] and r["category"] == "reasoning"
    assert json.loads(r["meta"]) == {"question_index": 5, "original_answer": "2", "source_id": "0"}


def test_raw_layout_question_answers_and_image_keys(imported):
    out, _ = imported
    recs = _all(out)
    r = recs["okvqa-train-0"]  # paraphrase kept: it carries the original answer
    assert r["instruction"] in OKVQA_POOL and r["inputs"] == "What sport is this?"
    assert r["outputs"] == "The people in the picture are playing tennis." and r["images"] == [IMG["k0"]]
    assert json.loads(r["meta"]) == {"source_id": "0", "original_answer": "tennis",
                                     "rephrase": {"status": "rephrased", "provider": "m3it-release"}}
    r = recs["okvqa-train-1"]  # the paraphrase is a refusal: the template of the original answer instead
    assert r["outputs"] == "The answer is apple." and r["images"] == [IMG["k1"]]
    assert json.loads(r["meta"])["rephrase"]["status"] == "fallback:refusal"
    r = recs["okvqa-train-q77"]  # a short answer only; the line's id; "image" as one string
    assert (r["outputs"], r["images"]) == ("a kite", [IMG["k2"]])
    assert json.loads(r["meta"]) == {"source_id": "q77", "original_answer": "a kite"}
    r = recs["a-okvqa-validation-0"]  # the rationale goes where the rephrase prompt reads it
    assert json.loads(r["meta"])["rationale"] == "It is raining." and r["instruction"] == "Answer it."


def test_files_cut_into_many_byte_ranges_give_the_same_records(imported, release, tmp_path):
    out, stats = imported
    chunked = str(tmp_path / "chunked")
    chunked_stats = import_m3it(release, chunked, progress=None, chunk_bytes=300)
    assert chunked_stats == stats
    first, second = _all(out), _all(chunked)
    assert sorted(first) == sorted(second)
    for rid, rec in first.items():
        assert second[rid] == rec, rid

    def where(r):  # a duplicate is found after the write: it names the records file, which differs
        return "records" if r["reason"].startswith("duplicate") else r["source"].rsplit("/", 1)[1]

    assert sorted((where(r), r["reason"]) for r in read_rejects(chunked)) == sorted(
        (where(r), r["reason"]) for r in read_rejects(out))


def test_parquet_loads_with_hf_datasets(imported, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    out, _ = imported
    files = sorted(os.path.join(out, "records", "train", f) for f in os.listdir(os.path.join(out, "records", "train")))
    assert all(pq.read_schema(f).remove_metadata() == RECORD_SCHEMA for f in files)
    ds = datasets.load_dataset("parquet", data_files={"train": files}, cache_dir=str(tmp_path / "hf"))["train"]
    assert ds.num_rows == 8 and ds.column_names == RECORD_SCHEMA.names
    row = {r["id"]: r for r in ds}["vqa-v2-train-4711"]
    assert row["images"] == [IMG["v0"]] and row["outputs"] == "The bus is red."


def test_export_writes_the_release_tree(imported, tmp_path):
    out, _ = imported
    dst = str(tmp_path / "export")
    counts = export_m3it(out, dst, progress=None)
    assert counts["vqa-v2"] == {"train": 2, "validation": 1}
    folder = os.path.join(dst, "data", "vqa", "vqav2")  # the release's group and folder names
    assert sorted(os.listdir(folder)) == ["instructions.json", "train.jsonl", "val.jsonl"]
    assert json.load(open(os.path.join(folder, "instructions.json"))) == load_pool("vqa-v2")  # our pool
    assert sorted(os.listdir(os.path.join(dst, "data"))) == ["captioning", "classification", "reasoning", "vqa"]
    for task, path in {"science-qa": "reasoning/science_qa", "chinese-food": "classification/chinesefoodnet-10",
                       "okvqa": "vqa/okvqa", "msrvtt-qa": "vqa/msrvtt-qa", "coco-cn": "captioning/coco-cn",
                       "new-puzzle": "reasoning/new-puzzle"}.items():
        assert os.path.isdir(os.path.join(dst, "data", path)), task
    lines = [json.loads(line) for line in open(os.path.join(folder, "train.jsonl"))]
    first = next(line for line in lines if line["meta"].get("source_id") == "4711")
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


def test_tasks_filter_and_clear_errors(release, tmp_path, ray_cluster):
    out = str(tmp_path / "only")
    stats = import_m3it(release, out, tasks=["mocheg"], progress=None)
    assert list(stats) == ["mocheg"]
    with pytest.raises(ValueError, match="not under"):
        import_m3it(release, out, tasks=["nope"], progress=None)
    with pytest.raises(FileNotFoundError):
        import_m3it(str(tmp_path / "missing"), out, progress=None)


def test_cli_import_and_export(release, tmp_path, capsys, ray_cluster):
    out, dst = str(tmp_path / "cli-in"), str(tmp_path / "cli-out")
    main(["m3it", "import", release, "--out", out])
    printed = capsys.readouterr().out
    assert "read 24 lines: 15 records written, 9 rejected" in printed
    assert "[ying] m3it import: " in printed  # one progress line, no bars
    main(["m3it", "export", "--data-dir", out, "--out", dst, "--tasks", "coco-cn"])
    assert "exported 1 records of 1 tasks" in capsys.readouterr().out
    line = json.loads(open(os.path.join(dst, "data", "captioning", "coco-cn", "test.jsonl"), encoding="utf-8").read())
    assert line["outputs"] == "一只猫坐在沙发上。"
    with pytest.raises(SystemExit):
        main(["m3it", "import", str(tmp_path / "missing"), "--out", out])


def test_our_built_records_export_and_reimport_byte_for_byte(tmp_path, ray_cluster):
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
