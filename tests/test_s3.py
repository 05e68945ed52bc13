"""s3:// run directories, against a real S3 protocol server (moto) on loopback."""

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from ying import storage
from ying.config import load_config
from ying.data.records import count_records, read_records
from ying.data.qc import check_records
from ying.data.schema import RECORD_SCHEMA
from ying.model.checkpoint import load_checkpoint, save_checkpoint
from ying.model.tokenizer import build_tokenizer
from ying.model.vlm import build_model


@pytest.fixture(scope="module")
def s3_bucket(s3_endpoint):
    return s3_endpoint("ying-test")


def test_manifests_and_json_round_trip(s3_bucket):
    stage = f"{s3_bucket}/run/unify"
    assert storage.read_manifest(stage) is None
    storage.write_manifest(stage, {"stage": "unify", "fingerprint": "abc"})
    assert storage.read_manifest(stage) == {"stage": "unify", "fingerprint": "abc"}
    assert storage.exists(storage.join(stage, storage.MANIFEST_NAME))


def test_records_qc_and_counts_on_s3(s3_bucket):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, "PNG")
    good = {"id": "coco-train-1", "task": "coco", "category": "captioning", "lang": "en", "split": "train",
            "images": [buf.getvalue()], "instruction": "Describe.", "inputs": "", "outputs": "a dot", "meta": "{}"}
    rows = [good, {**good, "id": "coco-train-2", "outputs": ""}]
    fs, path = storage.filesystem(f"{s3_bucket}/run/rephrase/records/train/part-0.parquet")
    with fs.open(path, "wb") as f:
        pq.write_table(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA), f)
    # in this process: Ray workers started before the moto endpoint was set would not see it
    qc = check_records(f"{s3_bucket}/run/rephrase", f"{s3_bucket}/run/qc", use_ray=False)
    assert (qc["passed"], qc["rejected"]) == (1, 1)
    assert [r["id"] for r in read_records(f"{s3_bucket}/run/qc", "train")] == ["coco-train-1"]
    assert count_records(f"{s3_bucket}/run/qc", "train", ["coco"]) == 1
    rejects = storage.filesystem(f"{s3_bucket}/run/qc/rejects.jsonl")
    assert json.loads(rejects[0].cat(rejects[1]).decode())["reason"] == "empty output"


def test_checkpoint_saves_and_loads_from_s3(s3_bucket):
    cfg = load_config("tiny")
    tok = build_tokenizer(cfg.model.tokenizer)
    model = build_model(cfg.model, tok, seed=3)
    save_checkpoint(model, tok, cfg.model, f"{s3_bucket}/run/stage1/hf", {"stage": "stage1"})
    loaded, tok2, _, meta = load_checkpoint(f"{s3_bucket}/run/stage1/hf")
    assert meta["stage"] == "stage1" and tok2.get_vocab() == tok.get_vocab()
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_loading_an_s3_checkpoint_leaves_no_local_copy(s3_bucket, tmp_path, monkeypatch):
    """Eval, the ablations and Serve load s3:// checkpoints through one loader; each load downloads
    to a temporary folder that must be gone afterwards (a replica reloading models would fill its disk)."""
    import tempfile

    from ying.serve.engine import load_engine

    cfg = load_config("tiny")
    tok = build_tokenizer(cfg.model.tokenizer)
    ckpt = f"{s3_bucket}/run/stage2/hf"
    save_checkpoint(build_model(cfg.model, tok, seed=4), tok, cfg.model, ckpt, {"stage": "stage2"})
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # this test's temp dirs only, whoever else runs
    made = []
    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp(*args, **kwargs):
        made.append(real_mkdtemp(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    model, _, _, meta = load_checkpoint(ckpt)
    engine = load_engine(ckpt, "stage2", device="cpu")
    assert meta["stage"] == "stage2" and engine.dtype == next(model.parameters()).dtype == torch.float32
    ying_dirs = [d for d in made if d.rsplit("/", 1)[-1].startswith("ying-")]
    assert len(ying_dirs) == 2, made  # both loads downloaded into a folder of their own ...
    assert not [p.name for p in scratch.iterdir() if p.name.startswith("ying-")]  # ... and removed it


def test_ray_train_storage_reaches_the_bucket_through_s3fs(s3_bucket, tmp_path):
    """What RunConfig gets for an s3:// run dir: a pyarrow filesystem over the same s3fs (so the
    same credentials and endpoint) and a path without its scheme; a local path made absolute."""
    import pyarrow.fs as pafs

    spec = storage.ray_run_storage(f"{s3_bucket}/run/stage1/ray_train")
    assert spec["storage_path"] == "ying-test/run/stage1/ray_train"
    fs = spec["storage_filesystem"]
    assert isinstance(fs, pafs.FileSystem)
    fs.create_dir(f"{spec['storage_path']}/stage1/checkpoint_0")
    with fs.open_output_stream(f"{spec['storage_path']}/stage1/checkpoint_0/state.bin") as f:
        f.write(b"weights")
    assert storage.filesystem(f"{s3_bucket}/run/stage1/ray_train/stage1/checkpoint_0/state.bin")[0].cat(
        "ying-test/run/stage1/ray_train/stage1/checkpoint_0/state.bin") == b"weights"
    local = storage.ray_run_storage("relative/ray_train")
    assert local == {"storage_path": str(tmp_path.cwd() / "relative" / "ray_train"), "storage_filesystem": None}
