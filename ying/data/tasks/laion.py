"""LAION image-text pairs as img2dataset downloads them (``--output_format webdataset``).

A release is a folder of shards: ``NNNNN.tar`` holds the samples, each ``<key>.jpg`` (``.png`` or
``.webp`` with img2dataset's ``--encode_format``), ``<key>.txt`` (the alt-text caption) and
``<key>.json`` (url, key, status, sizes, ...), beside ``NNNNN.parquet`` with the same metadata for
every input URL, failed downloads included. A sample is what the tar holds: the parquet's failed
downloads were never samples and are not read (each sample's ``.json`` carries its parquet row).

The images live inside the tars, not at paths, so the build reads this source as a Ray Dataset
(``read_dataset``, on ``ray.data.read_webdataset``: one read task per shard, streamed), not through
the instance listing that ``read_instances`` feeds. A shard cut short is one reject naming it
(checked up front on its last KiB), the others are read. One instance per sample, all in ``train``
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

__all__ = ["SPEC", "read_instances", "read_dataset", "shard_paths", "truncated_shards", "sample_item"]

SPEC = TaskSpec(key="laion", category="captioning", lang="en", splits=("train",), rephrase=False, stage2_mix=False)

_IMAGE_MEMBERS = ("jpg", "png", "webp")  # img2dataset's --encode_format choices, its default first
_TAR_END = 1024  # a tar ends with two zero blocks; a shard cut short (an interrupted copy) lacks them


def shard_paths(root: str) -> dict[str, int]:
    """The release's ``*.tar`` shards directly under ``root`` (full paths or URLs), in name order,
    with their sizes."""
    fs, p = storage.filesystem(root)
    try:
        entries = fs.ls(p, detail=True)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    sizes = {e["name"].rstrip("/").rsplit("/", 1)[-1]: e.get("size") or 0 for e in entries if e.get("type") != "directory"}
    return {storage.join(root, n): sizes[n] for n in sorted(sizes) if n.endswith(".tar")}


def truncated_shards(shards: dict[str, int]) -> dict[str, str]:
    """Shard -> why it ends early, from each shard's last KiB (fetched together): a tar read
    mid-stream would otherwise fail the whole read at the cut, naming no file."""
    whole = {s: n for s, n in shards.items() if n >= _TAR_END and n % 512 == 0}
    problems = {s: f"shard is truncated: {n} bytes is not a whole tar" for s, n in shards.items() if s not in whole}
    if whole:
        fs, _ = storage.filesystem(next(iter(whole)))
        tails = fs.cat_ranges([storage.filesystem(s)[1] for s in whole], [n - _TAR_END for n in whole.values()],
                              list(whole.values()))
        problems.update({s: "shard is truncated: it lacks the tar's end-of-archive blocks"
                         for s, tail in zip(whole, tails) if tail.strip(b"\0")})
    return problems


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
    cut = truncated_shards(shards)
    rejects = [{"source": s, "reason": why, "instance": "", "images": []} for s, why in cut.items()]
    if not shards:
        rejects = [{"source": root, "reason": f"no webdataset shards (*.tar) under {root}", "instance": "", "images": []}]
    paths = [storage.filesystem(s)[1] for s in shards if s not in cut]
    if not paths:
        return ray.data.from_items(rejects)
    fs, _ = storage.filesystem(root)
    ds = ray.data.read_webdataset(
        paths, filesystem=None if storage.is_local(root) else fs, decoder=_raw_sample,
        override_num_blocks=len(paths),
    ).map(_source_row, fn_kwargs={"root": root, "split": split})
    return ds.union(ray.data.from_items(rejects)) if rejects else ds  # (a union: rare, and unfused)


def read_instances(root: str, split: str) -> Iterator[SourceInstance | Reject]:
    """Not how laion is read: its images live inside tar shards, so the build reads it with
    ``read_dataset`` (a Ray Dataset of instances with their image bytes)."""
    raise NotImplementedError(
        f"laion is read as a Ray Dataset (ying.data.tasks.laion.read_dataset, as build_unified does): its images "
        f"live inside the webdataset shards under {root}, not at paths an instance listing could name")
    yield  # a generator, like every adapter's read_instances
