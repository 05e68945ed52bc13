"""The DAG runner: stages as Ray tasks passing ObjectRefs, with a durable per-stage cache.

``ray.workflow`` was removed from Ray and ``DAGNode.execute()`` is deprecated (Ray 2.60), so the
DAG is plain ``@ray.remote`` tasks: each stage task receives its dependencies' manifests (as
ObjectRefs, resolved by Ray before it starts) and returns its own manifest.

Durability comes from manifests: a stage writes ``<run_dir>/<stage>/_manifest.json`` last, holding
its fingerprint (its config sections and its inputs' fingerprints). On a re-run a stage whose
manifest carries the same fingerprint is skipped, so a crashed run resumes where it stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import ray

from ying import __version__, storage
from ying.config import YingConfig

__all__ = ["Stage", "StageContext", "stage_fingerprint", "run_stage_cached", "run_pipeline"]


@dataclass
class StageContext:
    cfg: YingConfig
    stage_dir: str  # <run_dir>/<stage>
    inputs: dict[str, dict]  # dependency name -> its manifest (outputs under "outputs")
    fingerprint: str = ""  # this stage's fingerprint: ties the stage's Ray Train/Tune runs to what it computes
    force: bool = False  # --force: start over, never resume an earlier attempt

    def output_of(self, dep: str, key: str) -> Any:
        return self.inputs[dep]["outputs"][key]


@dataclass
class Stage:
    name: str
    run: Callable[[StageContext], dict]  # returns the stage's outputs (JSON-able: paths, counts, metrics)
    deps: list[str] = field(default_factory=list)
    config_sections: list[str] = field(default_factory=list)  # dotted paths of the config it reads
    always_run: bool = False  # e.g. keeping a Serve app up: there is nothing to reuse


def _config_sections(stage: Stage, cfg: YingConfig) -> dict[str, Any]:
    """The parts of the config the stage reads, by dotted path."""
    tree = cfg.to_dict()
    parts = {}
    for dotted in stage.config_sections:
        node: Any = tree
        for key in dotted.split("."):
            node = node[key]
        parts[dotted] = node
    return parts


def stage_fingerprint(stage: Stage, cfg: YingConfig, inputs: dict[str, dict]) -> str:
    return storage.fingerprint(
        {
            "stage": stage.name,
            "ying": __version__,
            "config": _config_sections(stage, cfg),
            "inputs": {name: m["fingerprint"] for name, m in sorted(inputs.items())},
        }
    )


def run_stage_cached(stage: Stage, cfg: YingConfig, inputs: dict[str, dict], force: bool = False) -> dict:
    """Run one stage unless a finished run with the same fingerprint is on disk."""
    stage_dir = storage.join(cfg.run.run_dir, stage.name)
    fp = stage_fingerprint(stage, cfg, inputs)
    previous = storage.read_manifest(stage_dir)
    if previous and previous.get("fingerprint") == fp and not force and not stage.always_run:
        print(f"[ying] {stage.name}: up to date (fingerprint {fp}), skipped", flush=True)
        return {**previous, "skipped": True}
    if previous and previous.get("fingerprint") != fp:
        print(f"[ying] {stage.name}: inputs or config changed ({previous.get('fingerprint')} -> {fp}), re-running",
              flush=True)
    print(f"[ying] {stage.name}: running", flush=True)
    started = time.time()
    outputs = stage.run(StageContext(cfg=cfg, stage_dir=stage_dir, inputs=inputs, fingerprint=fp, force=force))
    manifest = {
        "stage": stage.name,
        "fingerprint": fp,
        "inputs": {name: m["fingerprint"] for name, m in inputs.items()},
        "config": _config_sections(stage, cfg),
        "outputs": outputs,
        "started": started,
        "seconds": round(time.time() - started, 2),
    }
    storage.write_manifest(stage_dir, manifest)
    print(f"[ying] {stage.name}: done in {manifest['seconds']:.1f}s", flush=True)
    return {**manifest, "skipped": False}


@ray.remote(num_cpus=0, max_retries=0)
def _stage_task(stage: Stage, cfg: YingConfig, force: bool, *dep_manifests: dict) -> dict:
    # Zero CPUs: the stage only orchestrates; the Ray Data / Train / Serve work it starts
    # asks for its own resources.
    inputs = {m["stage"]: m for m in dep_manifests}
    return run_stage_cached(stage, cfg, inputs, force=force)


def run_pipeline(stages: list[Stage], cfg: YingConfig, force: set[str] | None = None,
                 until: str | None = None) -> dict[str, dict]:
    """Submit every stage as a Ray task wired to its dependencies; wait for all; return manifests."""
    by_name = {s.name: s for s in stages}
    refs: dict[str, ray.ObjectRef] = {}
    force = force or set()
    for stage in stages:  # stages are listed in dependency order
        missing = [d for d in stage.deps if d not in by_name]
        if missing:
            raise ValueError(f"stage {stage.name!r} depends on unknown stages {missing}")
        refs[stage.name] = _stage_task.options(name=f"ying:{stage.name}").remote(
            stage, cfg, stage.name in force, *[refs[d] for d in stage.deps]
        )
        if stage.name == until:
            break
    return dict(zip(refs, ray.get(list(refs.values()))))
