"""Which checkpoints an app serves, and where its evaluation data is: resolved from a run directory's
stage manifests, a single checkpoint, and ``serve.models``.

Plain functions of paths, so the driver (``ying serve``, the DAG stage) can resolve a plan before
deploying and report a missing checkpoint at once, and every replica resolves the same plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ying import storage
from ying.config import YingConfig

__all__ = ["ServedModels", "resolve_models"]


@dataclass(frozen=True)
class ServedModels:
    checkpoints: dict[str, str]  # served name -> checkpoint dir, in listing order
    default: str
    data_dir: str | None = None  # records for /v1/evaluations (a built data dir: records/<split>/*.parquet)
    data_fingerprint: str | None = None  # the qc stage's fingerprint when the data comes from a run
    sources: dict[str, str] = field(default_factory=dict)  # task -> source root (CHAIR reads the mini-world's scenes)


def _manifest_output(run_dir: str, stage: str, key: str):
    manifest = storage.read_manifest(storage.join(run_dir, stage))
    if manifest is None:
        return None, None
    return manifest.get("outputs", {}).get(key), manifest.get("fingerprint")


def resolve_models(cfg: YingConfig, run_dir: str | None = None, checkpoint: str | None = None,
                   model_name: str | None = None, data_dir: str | None = None) -> ServedModels:
    """The served checkpoints: a run's Stage I/II (``stage1``, ``stage2``), ``checkpoint`` as ``model_name``,
    and ``serve.models``. Raises ValueError naming what is missing."""
    checkpoints: dict[str, str] = {}
    data_fp = None
    sources: dict[str, str] = {}
    if run_dir:
        for stage in ("stage1", "stage2"):
            path, _ = _manifest_output(run_dir, stage, "checkpoint")
            if path:
                checkpoints[stage] = path
        if not checkpoints:
            raise ValueError(f"{run_dir} has no finished stage1 or stage2 (no {storage.join(run_dir, 'stage2', '_manifest.json')}); "
                             "run the DAG first (`ying run --run-dir ...`) or pass a checkpoint")
        if data_dir is None:
            data_dir, data_fp = _manifest_output(run_dir, "qc", "data_dir")
        sources = _manifest_output(run_dir, "sources", "sources")[0] or {}
    if checkpoint:
        name = model_name or "ying-vlm"
        checkpoints[name] = checkpoint
    for name, path in cfg.serve.models.items():
        checkpoints[name] = path
    if not checkpoints:
        raise ValueError("nothing to serve: give a run directory (run_dir) with finished stage1/stage2, "
                         "a checkpoint, or serve.models")
    missing = [f"{n} ({p})" for n, p in checkpoints.items() if not storage.exists(storage.join(p, "ying_model.json"))]
    if missing:
        raise ValueError(f"not Ying checkpoints (no ying_model.json): {', '.join(missing)}")
    default = cfg.serve.default_model
    if default not in checkpoints:
        if default != "stage2":  # asked for by name: must exist
            raise ValueError(f"serve.default_model={default!r} is not served; served: {sorted(checkpoints)}")
        default = (model_name or "ying-vlm") if checkpoint else next(iter(checkpoints))
    return ServedModels(checkpoints, default, data_dir, data_fp, dict(sources))
