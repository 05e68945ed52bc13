"""Paths that may be local or ``s3://``, atomic writes, and stage manifests.

Everything that touches the run directory goes through here, so a run on a laptop and a run on a
cluster writing to S3 share one code path (fsspec picks the filesystem from the URL).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

__all__ = [
    "join",
    "filesystem",
    "exists",
    "read_json",
    "write_json_atomic",
    "write_bytes_atomic",
    "read_manifest",
    "write_manifest",
    "fingerprint",
    "is_local",
    "ray_run_storage",
    "MANIFEST_NAME",
]

MANIFEST_NAME = "_manifest.json"


def join(base: str, *parts: str) -> str:
    base = str(base)
    if "://" in base:
        return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])
    return os.path.join(base, *parts)


def filesystem(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path without protocol) for a local path or URL."""
    fs, _, paths = fsspec.get_fs_token_paths(str(path))
    return fs, paths[0]


def is_local(path: str) -> bool:
    """True for a path on this machine's filesystem (no ``scheme://``, or ``file://``)."""
    path = str(path)
    return "://" not in path or path.startswith("file://")


def ray_run_storage(path: str) -> dict[str, Any]:
    """``storage_path`` and ``storage_filesystem`` for Ray Train's / Tune's ``RunConfig`` at ``path``.

    Ray wants a pyarrow filesystem and a path without its scheme. For ``s3://`` (and any other
    fsspec URL) the fsspec filesystem Ying uses everywhere is wrapped, so Train and Tune reach the
    bucket with the same credentials and endpoint as the rest of the run (s3fs reads the usual AWS
    chain: environment, config files, instance profile). A local path is made absolute.

        ray.train.RunConfig(name=..., **storage.ray_run_storage(storage.join(stage_dir, "ray_train")))
    """
    if is_local(path):
        local = str(path)[len("file://"):] if str(path).startswith("file://") else str(path)
        return {"storage_path": os.path.abspath(local), "storage_filesystem": None}
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, bare = filesystem(path)
    return {"storage_path": bare, "storage_filesystem": PyFileSystem(FSSpecHandler(fs))}


def exists(path: str) -> bool:
    fs, p = filesystem(path)
    return fs.exists(p)


def makedirs(path: str) -> None:
    fs, p = filesystem(path)
    fs.makedirs(p, exist_ok=True)


def read_json(path: str) -> Any:
    fs, p = filesystem(path)
    with fs.open(p, "r", encoding="utf-8") as f:
        return json.load(f)


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Write to a temporary name, then rename, so a reader never sees half a file.

    Object stores have no rename; there a single PUT is already all-or-nothing.
    """
    fs, p = filesystem(path)
    parent = p.rsplit("/", 1)[0] if "/" in p else "."
    fs.makedirs(parent, exist_ok=True)
    if isinstance(fs, LocalFileSystem):
        tmp = f"{p}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    else:
        with fs.open(p, "wb") as f:
            f.write(data)


def write_json_atomic(path: str, obj: Any) -> None:
    write_bytes_atomic(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False).encode("utf-8"))


def fingerprint(obj: Any) -> str:
    """A stable hash of any JSON-able object (dict key order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


def read_manifest(stage_dir: str) -> dict | None:
    path = join(stage_dir, MANIFEST_NAME)
    if not exists(path):
        return None
    try:
        return read_json(path)
    except (json.JSONDecodeError, OSError):
        return None  # a torn manifest means the stage did not finish


def write_manifest(stage_dir: str, manifest: dict) -> None:
    """Written last by a stage: its presence means every other output of the stage is complete."""
    write_json_atomic(join(stage_dir, MANIFEST_NAME), manifest)


