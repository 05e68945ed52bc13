"""The DAG runner: stages as Ray tasks passing ObjectRefs, with a durable per-stage cache.

``ray.workflow`` was removed from Ray and ``DAGNode.execute()`` is deprecated (Ray 2.60), so the
DAG is plain ``@ray.remote`` tasks: each stage task receives its dependencies' manifests (as
ObjectRefs, resolved by Ray before it starts) and returns its own manifest.

Durability comes from manifests: a stage writes ``<run_dir>/<stage>/_manifest.json`` last. A stage
is up to date, and skipped, when its manifest holds

- the same fingerprint: the config sections it reads (execution-only settings left out, see
  ``ying.config.execution_only``), the version of the code it runs (``ying.code_version``) and
  its inputs' fingerprints; and
- the same input runs: every input's manifest is the one this stage was built from. A stage that
  re-ran (``--force``, or an earlier run that stopped half way) makes everything downstream re-run.

Fingerprints are computed up front on the driver, so ``ying status`` can say what would re-run and why
without running anything.
"""

from __future__ import annotations

import copy
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import ray

from ying import storage
from ying.code_version import code_versions
from ying.config import YingConfig, execution_only_paths

__all__ = [
    "Stage",
    "StageContext",
    "stage_config",
    "stage_fingerprint",
    "plan_fingerprints",
    "stale_reasons",
    "pipeline_status",
    "run_stage_cached",
    "run_pipeline",
    "run_on_cpus",
    "downstream_of",
    "upstream_of",
]


@dataclass
class StageContext:
    cfg: YingConfig
    stage_dir: str  # <run_dir>/<stage>
    inputs: dict[str, dict]  # dependency name -> its manifest (outputs under "outputs")
    # Ties the stage's Ray Train/Tune runs to what it computes: its fingerprint and the very runs of its
    # inputs (an input that re-ran gives a new key, so an old run's checkpoint is never resumed).
    fingerprint: str = ""
    force: bool = False  # --force: start over, never resume an earlier attempt

    def output_of(self, dep: str, key: str) -> Any:
        return self.inputs[dep]["outputs"][key]


@dataclass
class Stage:
    name: str
    run: Callable[[StageContext], dict]  # returns the stage's outputs (JSON-able: paths, counts, metrics)
    deps: list[str] = field(default_factory=list)
    config_sections: list[str] = field(default_factory=list)  # dotted paths of the config it reads
    # Modules (or packages) whose code the stage runs, beyond those its run function imports; their
    # imports are followed (ying.code_version) and the result is part of the fingerprint.
    code: list[str] = field(default_factory=list)
    # Problems a config would hit in this stage, found before Ray starts (one line each, naming the fix).
    check: Callable[[YingConfig], list[str]] | None = None
    always_run: bool = False  # e.g. keeping a Serve app up: there is nothing to reuse
    # Stages to wait for without reading them (not inputs, not fingerprinted): ordering only, e.g. two
    # trainings a small cluster cannot hold at once. A function of the config, so a preset can choose.
    after: Callable[[YingConfig], list[str]] | None = None


def _drop(tree: Any, dotted: str) -> None:
    *parents, last = dotted.split(".")
    node = tree
    for key in parents:
        if not isinstance(node, dict) or key not in node:
            return
        node = node[key]
    if isinstance(node, dict):
        node.pop(last, None)


def stage_config(stage: Stage, cfg: YingConfig, tree: dict | None = None) -> dict[str, Any]:
    """The config sections the stage reads, by dotted path, without execution-only settings."""
    tree = cfg.to_dict() if tree is None else tree
    skip = execution_only_paths()
    parts = {}
    for dotted in stage.config_sections:
        if dotted in skip:
            continue
        node: Any = tree
        for key in dotted.split("."):
            node = node[key]
        node = copy.deepcopy(node)
        for path in skip:
            if path.startswith(dotted + "."):
                _drop(node, path[len(dotted) + 1:])
        parts[dotted] = node
    return parts


def _stage_code(stage: Stage) -> dict[str, str]:
    return code_versions(stage.code, run=stage.run)


def _fingerprint(name: str, config: dict, code: dict, inputs: dict[str, str]) -> str:
    return storage.fingerprint({"stage": name, "config": config, "code": code, "inputs": dict(sorted(inputs.items()))})


def stage_fingerprint(stage: Stage, cfg: YingConfig, inputs: dict[str, dict]) -> str:
    """The fingerprint of ``stage`` given its inputs' manifests (anything with a "fingerprint")."""
    return _fingerprint(stage.name, stage_config(stage, cfg), _stage_code(stage),
                        {n: m["fingerprint"] for n, m in inputs.items()})


def plan_fingerprints(stages: list[Stage], cfg: YingConfig) -> dict[str, dict]:
    """Every stage's expected fingerprint and its parts, in dependency order, without running anything."""
    tree = cfg.to_dict()
    plan: dict[str, dict] = {}
    for stage in stages:
        missing = [d for d in stage.deps if d not in plan]
        if missing:
            raise ValueError(f"stage {stage.name!r} depends on {missing}, which are not listed before it")
        config, code = stage_config(stage, cfg, tree), _stage_code(stage)
        inputs = {d: plan[d]["fingerprint"] for d in stage.deps}
        plan[stage.name] = {"fingerprint": _fingerprint(stage.name, config, code, inputs),
                            "config": config, "code": code, "inputs": inputs}
    return plan


def downstream_of(stages: list[Stage], names: set[str]) -> set[str]:
    """``names`` and every stage that depends on one of them, directly or not."""
    out = set(names)
    for stage in stages:  # dependency order: one pass suffices
        if out.intersection(stage.deps):
            out.add(stage.name)
    return out


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: tree}


def _changed_keys(before: dict, after: dict) -> list[str]:
    a, b = _flatten(before), _flatten(after)
    return sorted(k for k in set(a) | set(b) if a.get(k, "<unset>") != b.get(k, "<unset>"))


def _short(items: list[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def stale_reasons(previous: dict | None, expected: dict, input_manifests: dict[str, dict | None]) -> list[str]:
    """Why a stage's manifest no longer stands for what this config, code and inputs would produce.

    Empty when it is up to date. ``expected`` is one entry of ``plan_fingerprints``;
    ``input_manifests`` are the inputs' manifests now on disk (None where missing).
    """
    if previous is None:
        return ["never finished"]
    reasons = []
    if previous.get("fingerprint") != expected["fingerprint"]:
        keys = _changed_keys(previous.get("config", {}), expected["config"])
        if keys:
            reasons.append(f"config changed: {_short(keys)}")
        if "code" not in previous:
            reasons.append("code version not recorded (made by an older Ying)")
        else:
            modules = _changed_keys(previous["code"], expected["code"])
            if modules:
                reasons.append(f"code changed: {_short(modules)}")
        recorded = previous.get("inputs", {})
        changed = [d for d, fp in expected["inputs"].items() if recorded.get(d) != fp]
        if changed:
            reasons.append(f"input changed: {_short(changed)}")
        if not reasons:
            reasons.append("fingerprint changed")
    runs = previous.get("input_runs", {})
    for dep, manifest in input_manifests.items():
        if manifest is None:
            reasons.append(f"input {dep} is missing")
        elif manifest.get("fingerprint") == expected["inputs"].get(dep) and runs.get(dep) != manifest.get("run_id"):
            reasons.append(f"input {dep} re-ran since")
    return reasons


def pipeline_status(stages: list[Stage], cfg: YingConfig) -> list[dict]:
    """Each stage as ``done``, ``stale`` (with reasons) or ``missing``, read from the run dir; no Ray."""
    plan = plan_fingerprints(stages, cfg)
    manifests = {s.name: storage.read_manifest(storage.join(cfg.run.run_dir, s.name)) for s in stages}
    rows = []
    for stage in stages:
        manifest = manifests[stage.name]
        if manifest is None:
            rows.append({"stage": stage.name, "state": "missing", "reasons": []})
            continue
        reasons = stale_reasons(manifest, plan[stage.name], {d: manifests[d] for d in stage.deps})
        rows.append({"stage": stage.name, "state": "stale" if reasons else "done", "reasons": reasons,
                     "seconds": manifest.get("seconds"), "always_run": stage.always_run})
    return rows


def run_stage_cached(stage: Stage, cfg: YingConfig, inputs: dict[str, dict], force: bool = False,
                     expected: dict | None = None) -> dict:
    """Run one stage unless a finished run with the same fingerprint and input runs is on disk."""
    expected = expected or _expected_from_inputs(stage, cfg, inputs)
    fp = expected["fingerprint"]
    stage_dir = storage.join(cfg.run.run_dir, stage.name)
    previous = storage.read_manifest(stage_dir)
    reasons = stale_reasons(previous, expected, inputs) if previous else []
    if previous and not reasons and not force and not stage.always_run:
        print(f"[ying] {stage.name}: up to date (fingerprint {fp}), skipped", flush=True)
        return {**previous, "skipped": True}
    why = "forced" if force and previous and not reasons else "; ".join(reasons)
    print(f"[ying] {stage.name}: running" + (f" ({why})" if previous and why else ""), flush=True)
    started = time.time()
    run_key = storage.fingerprint({"fingerprint": fp, "input_runs": {n: m.get("run_id") for n, m in inputs.items()}})
    outputs = stage.run(StageContext(cfg=cfg, stage_dir=stage_dir, inputs=inputs, fingerprint=run_key, force=force))
    manifest = {
        "stage": stage.name,
        "fingerprint": fp,
        "run_id": uuid.uuid4().hex,  # which run of this stage downstream stages were built from
        "inputs": {name: m["fingerprint"] for name, m in inputs.items()},
        "input_runs": {name: m.get("run_id") for name, m in inputs.items()},
        "config": expected["config"],
        "code": expected["code"],
        "outputs": outputs,
        "started": started,
        "seconds": round(time.time() - started, 2),
    }
    storage.write_manifest(stage_dir, manifest)
    print(f"[ying] {stage.name}: done in {manifest['seconds']:.1f}s", flush=True)
    return {**manifest, "skipped": False}


def _expected_from_inputs(stage: Stage, cfg: YingConfig, inputs: dict[str, dict]) -> dict:
    config, code = stage_config(stage, cfg), _stage_code(stage)
    fps = {n: m["fingerprint"] for n, m in inputs.items()}
    return {"fingerprint": _fingerprint(stage.name, config, code, fps), "config": config, "code": code, "inputs": fps}


@ray.remote(num_cpus=0, max_retries=0)
def _stage_task(stage: Stage, cfg: YingConfig, force: bool, expected: dict, *dep_manifests: dict) -> dict:
    # Zero CPUs: the stage only orchestrates; the Ray Data / Train / Serve work it starts, and its
    # own CPU work (run_on_cpus), ask for their own resources. A stage holding a CPU would starve
    # its training workers on a small machine and sit on the head (CPU 0) of a cluster.
    from ying.console import quiet_stage_process

    quiet_stage_process()
    inputs = {m["stage"]: m for m in dep_manifests if m["stage"] in stage.deps}  # the rest only orders
    return run_stage_cached(stage, cfg, inputs, force=force, expected=expected)


@ray.remote(max_retries=0)
def _call(fn: Callable, args: tuple, kwargs: dict) -> Any:
    from ying.console import quiet_stage_process

    quiet_stage_process()
    return fn(*args, **kwargs)


def run_on_cpus(fn: Callable, *args: Any, num_cpus: float = 1, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` as a Ray task holding ``num_cpus`` CPUs; returns its result.

    For CPU work inside a stage (statistics, the review page, the report): it is scheduled like any
    other work, on a node with a free CPU, never unaccounted on the node the stage task sits on.
    """
    name = getattr(fn, "__name__", "cpu_work")
    return ray.get(_call.options(num_cpus=num_cpus, name=f"ying:{name}").remote(fn, args, kwargs))


def upstream_of(stages: list[Stage], names: set[str]) -> set[str]:
    """``names`` and every stage they depend on, directly or not."""
    deps = {s.name: s.deps for s in stages}
    out, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name not in out:
            out.add(name)
            todo.extend(deps[name])
    return out


def run_pipeline(stages: list[Stage], cfg: YingConfig, force: set[str] | None = None,
                 until: str | None = None, targets: set[str] | None = None) -> dict[str, dict]:
    """Submit every stage as a Ray task wired to its dependencies; wait for all; return manifests.

    A stage in ``force`` re-runs even when up to date; the stages after it then re-run too, since
    their input changed run. ``until`` stops after that stage (in list order); ``targets`` runs
    only those stages and what they depend on (ordering-only ``after`` stages are not pulled in).
    """
    plan = plan_fingerprints(stages, cfg)
    wanted = upstream_of(stages, targets) if targets else None
    refs: dict[str, ray.ObjectRef] = {}
    force = force or set()
    for stage in stages:  # stages are listed in dependency order
        if wanted is not None and stage.name not in wanted:
            continue
        waits = [d for d in (stage.after(cfg) if stage.after else []) if d in refs and d not in stage.deps]
        refs[stage.name] = _stage_task.options(name=f"ying:{stage.name}").remote(
            stage, cfg, stage.name in force, plan[stage.name], *[refs[d] for d in stage.deps + waits]
        )
        if stage.name == until:
            break
    return dict(zip(refs, ray.get(list(refs.values()))))
