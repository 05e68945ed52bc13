"""A LAION-style release as img2dataset writes it (``--output_format webdataset``).

Per shard ``NNNNN``: ``NNNNN.tar``, a webdataset whose samples are ``<key>.jpg``, ``<key>.json``
(the sample's metadata, indented as img2dataset writes it) and ``<key>.txt`` (the caption), members
in that order; ``NNNNN.parquet`` beside it, one row per input URL (url, caption, key, status,
error_message, width, height, original_width, original_height, exif, sha256), the failed downloads
included (status ``failed_to_download``: in the parquet only, never in the tar); and
``NNNNN_stats.json``. Keys are ``<shard:05d><index in shard:04d>``, img2dataset's default widths, so
a failed download leaves a gap in the tar's keys.

Captions are true of their pictures, as COCO's are (``scenes.captions_en``): one per image, as LAION
has one alt-text. The release is clean; tests write broken samples themselves.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq

from .scenes import captions_en, draw_scene, encode_jpeg, random_scene

__all__ = ["write_laion", "LAION_SHARDS", "PARQUET_SCHEMA"]

LAION_SHARDS = 2  # shards per release, the images split evenly between them
_FAILED_EVERY = 10  # one input URL in 10 failed to download: a parquet row, a gap in the tar's keys
# img2dataset's parquet: the input columns (url, caption), then what the download added.
PARQUET_SCHEMA = pa.schema([
    ("url", pa.string()), ("caption", pa.string()), ("key", pa.string()), ("status", pa.string()),
    ("error_message", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
    ("original_width", pa.int32()), ("original_height", pa.int32()), ("exif", pa.string()),
    ("sha256", pa.string()),
])
_MTIME = 1_700_000_000  # a fixed member time: the same inputs give byte-identical tars


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), _MTIME, 0o444
    info.uname = info.gname = "bigdata"  # webdataset's TarWriter's owner
    tar.addfile(info, io.BytesIO(data))


def write_laion(sink, sizes: dict[str, int], size: int, rngs: dict[str, random.Random]) -> None:
    """``sizes["train"]`` images (LAION has no other split) over ``LAION_SHARDS`` shards."""
    extra = set(sizes) - {"train"}
    if extra:
        raise ValueError(f"laion has only a train split; got sizes for {sorted(extra)}")
    n, rng = sizes.get("train", 0), rngs["train"]
    per_shard = math.ceil(n / LAION_SHARDS)
    written = 0
    for shard in range(LAION_SHARDS):
        images = min(per_shard, n - written)
        if images <= 0:
            break
        rows, tar_bytes, index = [], io.BytesIO(), 0
        with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            done = 0
            while done < images:
                key = f"{shard:05d}{index:04d}"
                url = f"https://images.example.invalid/laion/{key}.jpg"
                index += 1
                if index % _FAILED_EVERY == 0:
                    rows.append({"url": url, "caption": "a picture", "key": key, "status": "failed_to_download",
                                 "error_message": "HTTP Error 404: Not Found", "width": None, "height": None,
                                 "original_width": None, "original_height": None, "exif": None, "sha256": None})
                    continue
                scene = random_scene(rng, size)
                jpg = encode_jpeg(draw_scene(scene))
                caption = rng.choice(captions_en(scene))
                meta = {"url": url, "caption": caption, "key": key, "status": "success", "error_message": None,
                        "width": size, "height": size, "original_width": size, "original_height": size,
                        "exif": "{}", "sha256": hashlib.sha256(jpg).hexdigest()}
                rows.append(meta)
                _add_member(tar, f"{key}.jpg", jpg)
                _add_member(tar, f"{key}.json", json.dumps(meta, indent=4).encode("utf-8"))
                _add_member(tar, f"{key}.txt", caption.encode("utf-8"))
                sink.scenes[f"{shard:05d}.tar#{key}.jpg"] = {
                    "background": scene.background,
                    "shapes": [{"kind": s.kind, "color": s.color, "box": list(s.box)} for s in scene.shapes],
                }
                done += 1
        written += images
        name = f"{shard:05d}"
        sink.put(f"{name}.tar", tar_bytes.getvalue())
        table_bytes = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=PARQUET_SCHEMA), table_bytes)
        sink.put(f"{name}.parquet", table_bytes.getvalue())
        ok = sum(r["status"] == "success" for r in rows)
        sink.put_json(f"{name}_stats.json", {
            "count": len(rows), "successes": ok, "failed_to_download": len(rows) - ok, "failed_to_resize": 0,
            "status_dict": {"success": ok, **({"HTTP Error 404: Not Found": len(rows) - ok} if len(rows) > ok else {})},
        })
