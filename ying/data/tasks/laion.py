"""LAION image-text pairs as img2dataset downloads them (``--output_format webdataset``).

A release is a folder of shards: ``NNNNN.tar`` holds the samples, each ``<key>.jpg`` (``.png`` or
``.webp`` with img2dataset's ``--encode_format``), ``<key>.txt`` (the alt-text caption) and
``<key>.json`` (url, key, status, sizes, ...), beside ``NNNNN.parquet`` with the same metadata for
every input URL, failed downloads included. A sample is what the tar holds: the parquet's failed
downloads were never samples and are not read (each sample's ``.json`` carries its parquet row).

The images live inside the tars, not at paths, so the build reads this source as a Ray Dataset
(``read_dataset``, on ``ray.data.read_webdataset``: one read task per shard, streamed), not through
the instance listing that ``read_instances`` feeds. One instance per sample, all in ``train``
(LAION has no other split); the Stage I alignment data of the paper (§3.1.1), outside Stage II's mix.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Iterator

from ... import storage
from ..schema import Reject, SourceInstance
from . import TaskSpec

if TYPE_CHECKING:
    import ray.data

__all__ = ["SPEC", "read_instances", "read_dataset", "shard_paths", "sample_item"]

SPEC = TaskSpec(key="laion", category="captioning", lang="en", splits=("train",), rephrase=False, stage2_mix=False)

_IMAGE_MEMBERS = ("jpg", "png", "webp")  # img2dataset's --encode_format choices, its default first


def shard_paths(root: str) -> list[str]:
    """The release's ``*.tar`` shards directly under ``root``, in name order (full paths or URLs)."""
    fs, p = storage.filesystem(root)
    try:
        names = [e.rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(p, detail=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [storage.join(root, n) for n in sorted(names) if n.endswith(".tar")]


def _raw_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """read_webdataset's decoder: the sample's members as raw bytes, every sample with the same
    columns (a member a sample lacks is ``b""`` and missing from ``members``), so a block of samples
    never mixes bytes with nulls."""
    present = sorted(k for k in sample if not k.startswith("__"))
    image_member = next((m for m in _IMAGE_MEMBERS if m in sample), "")
    return {
        "key": str(sample["__key__"]),
        "shard": str(sample["__url__"]).rstrip("/").rsplit("/", 1)[-1],
        "members": ",".join(present),
        "image_member": image_member,
        "image": sample[image_member] if image_member else b"",
        "txt": sample.get("txt", b""),
        "json": sample.get("json", b""),
    }


def sample_item(raw: dict[str, Any], root: str, split: str) -> tuple[SourceInstance | Reject, bytes]:
    """One raw sample (``_raw_sample``'s row) -> its instance (``image_paths`` names the member
    inside its shard, ``<root>/NNNNN.tar#<key>.jpg``) and the image bytes, or a Reject with why.
    The bytes are checked by the build, as every task's images are."""
    source = f"{storage.join(root, raw['shard'])}#{raw['key']}"
    present = set(filter(None, raw["members"].split(",")))

    def reject(reason: str) -> tuple[Reject, bytes]:
        return Reject(SPEC.key, split, source, reason), b""

    if not raw["image_member"]:
        return reject(f"sample has no image: no .jpg member in {raw['shard']} (members: {sorted(present) or 'none'})")
    if "txt" not in present:
        return reject(f"sample has no caption: no .txt member in {raw['shard']}")
    try:
        caption = raw["txt"].decode("utf-8").strip()
    except UnicodeDecodeError as e:
        return reject(f"caption is not UTF-8: {e}")
    if not caption:
        return reject("empty caption")
    meta: dict[str, Any] = {"key": raw["key"], "shard": raw["shard"]}
    if "json" in present:
        try:
            info = json.loads(raw["json"].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            return reject(f"metadata .json is not valid JSON: {e}")
        if isinstance(info, dict) and info.get("url"):
            meta["url"] = info["url"]
    instance = SourceInstance(
        task=SPEC.key, split=split, source_id=raw["key"], source=source, inputs="", outputs=caption,
        image_paths=[f"{source}.{raw['image_member']}"], meta=meta,
    )
    return instance, raw["image"]


def _source_row(raw: dict[str, Any], root: str, split: str) -> dict[str, Any]:
    """A sample as a row of the build's dataset contract (``build.build_dataset_batch``)."""
    item, image = sample_item(raw, root, split)
    if isinstance(item, Reject):
        return {"source": item.source, "reason": item.reason, "instance": "", "images": []}
    return {"source": item.source, "reason": "", "instance": json.dumps(vars(item), ensure_ascii=False),
            "images": [image]}


def read_dataset(root: str, split: str) -> "ray.data.Dataset":
    """The release's samples as a Ray Dataset of ``{source, reason, instance, images}`` rows: a
    Reject where ``reason`` is set, else the SourceInstance as JSON and its image bytes.

    One read task per shard (``override_num_blocks``), so which samples share a block depends on
    the shards alone, never on the cluster's size. Memory per task: a block of one shard.
    """
    import ray

    if split not in SPEC.splits:
        raise ValueError(f"laion has splits {SPEC.splits}; got {split!r}")
    shards = shard_paths(root)
    if not shards:
        return ray.data.from_items([{"source": root, "reason": f"no webdataset shards (*.tar) under {root}",
                                     "instance": "", "images": []}])
    fs, _ = storage.filesystem(root)
    paths = [storage.filesystem(s)[1] for s in shards]
    ds = ray.data.read_webdataset(
        paths, filesystem=None if storage.is_local(root) else fs, decoder=_raw_sample,
        override_num_blocks=len(paths),
    )
    return ds.map(_source_row, fn_kwargs={"root": root, "split": split})


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    """Not how laion is read: its images live inside tar shards, so the build reads it with
    ``read_dataset`` (a Ray Dataset of instances with their image bytes)."""
    raise NotImplementedError(
        f"laion is read as a Ray Dataset (ying.data.tasks.laion.read_dataset, as build_unified does): its images "
        f"live inside the webdataset shards under {root}, not at paths an instance listing could name")
    yield  # a generator, like every adapter's read_instances
