"""Checks before a run: a config that cannot work is reported at once, as one message naming the fix,
before Ray starts (no task traceback, no minutes lost building data first).

- ``config_problems``: each stage's own check (``Stage.check``) for the stages that will run;
- ``run_dir_problem``: a local run dir where the run spans nodes, or runs as a Ray job, and so
  would be written to several disks (or to a job's working directory, which Ray deletes);
- ``installed_package_problem``: under a job, the code comes from the uploaded working dir while
  its dependencies are what cluster.yaml's setup commands installed on the nodes (`ray up`); the two
  must be the same version of Ying.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

from ying import __version__, storage
from ying.config import YingConfig

__all__ = ["in_ray_job", "config_problems", "run_dir_problem", "installed_package_problem", "format_problems"]

# Set by Ray's job supervisor for the entrypoint of `ray job submit` (and JobSubmissionClient).
_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def in_ray_job() -> bool:
    return _JOB_ENV in os.environ


def config_problems(cfg: YingConfig, stages: list, until: str | None = None) -> list[str]:
    problems: list[str] = []
    for stage in stages:
        if stage.check is not None:
            problems.extend(stage.check(cfg))
        if stage.name == until:
            break
    return problems


def run_dir_problem(cfg: YingConfig, in_job: bool, nodes: int | None, cwd: str | None = None) -> str | None:
    """Why this run dir can't hold a run of this shape, or None.

    ``nodes``: alive nodes in the cluster (None before Ray starts). Under a job the driver's working
    directory is the job's unpacked copy of the code, on the head only, deleted by Ray afterwards.
    """
    if not in_job and (nodes or 0) <= 1:
        return None
    where = "is a Ray job" if in_job else f"spans {nodes} nodes"
    # The run dir, and the caches a user may have moved out of it.
    paths = {"run.run_dir": cfg.run.run_dir, "rephrase.cache_dir": cfg.rephrase.cache_dir,
             "eval.cache_dir": cfg.eval.cache_dir}
    local = {key: path for key, path in paths.items() if path and storage.is_local(path)}
    if not local:
        return None
    if not cfg.run.shared_fs:
        key, path = next(iter(local.items()))
        fix = ("Use --run-dir s3://<bucket>/<prefix>" if key == "run.run_dir"
               else f"Set {key} to an s3:// path, or leave it unset (it then lives under the run dir)")
        return (f"{key}={path} is a local path, but this run {where}: Ray Data, Train and Tune workers "
                f"on other nodes would write their parts to their own disks. {fix}, "
                "or, if that path is on a filesystem every node mounts at the same place (NFS, Lustre, EFS), "
                "--set run.shared_fs=true")
    run_dir = cfg.run.run_dir
    if not storage.is_local(run_dir):
        return None
    cwd = os.path.realpath(cwd or os.getcwd())
    if in_job and os.path.commonpath([cwd, os.path.realpath(run_dir)]) == cwd:
        return (f"run.run_dir={run_dir} is inside the Ray job's working directory ({cwd}), the job's own copy "
                "of the code, which Ray deletes later. Give an absolute path on the shared filesystem, "
                "or --run-dir s3://<bucket>/<prefix>")
    return None


def _requirements(specs) -> dict[str, tuple[set[str], str]]:
    """``{name: (extras, specifier)}`` of the run-time requirements (optional extras left out)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    out = {}
    for spec in specs or []:
        req = Requirement(spec)
        if req.marker is None or "extra" not in str(req.marker):
            out[canonicalize_name(req.name)] = (set(req.extras), str(req.specifier))
    return out


def _unmet(declared: dict, installed: dict) -> list[str]:
    unmet = []
    for name, (extras, specifier) in sorted(declared.items()):
        have = installed.get(name)
        if have is None or have[1] != specifier or not extras <= have[0]:
            unmet.append(f"{name}{'[' + ','.join(sorted(extras)) + ']' if extras else ''}{specifier}")
    return unmet


def installed_package_problem(code_root: Path | None = None) -> str | None:
    """Whether the node's installed ``ying`` (and so its dependencies) matches the code that runs.

    ``code_root``: the folder holding the running ``ying`` package and, under a job, the uploaded
    pyproject.toml. Nothing to compare (no pyproject, Python < 3.11) means no problem found.
    """
    fix = "run `ray up cluster.yaml` from this checkout: it syncs the repo to ~/ying and reinstalls it on every node"
    try:
        dist = importlib.metadata.distribution("ying")
    except importlib.metadata.PackageNotFoundError:
        return f"this node has no `ying` installed, so none of its dependencies: {fix}"
    pyproject = Path(code_root or Path(__file__).resolve().parent.parent) / "pyproject.toml"
    try:
        import tomllib

        project = tomllib.loads(pyproject.read_text())["project"]
    except (ImportError, OSError, KeyError, ValueError):
        project = {"version": __version__}
    if dist.version != project["version"]:
        return f"the job runs ying {project['version']} but the node has ying {dist.version} installed: {fix}"
    if "dependencies" in project:
        missing = _unmet(_requirements(project["dependencies"]), _requirements(dist.requires))
        if missing:
            return f"the job's code needs {', '.join(missing)}, which the node's installed ying does not: {fix}"
    return None


def format_problems(problems: list[str]) -> str:
    if len(problems) == 1:
        return f"ying: {problems[0]}"
    return "ying: this config can't run:\n" + "\n".join(f"  - {p}" for p in problems)
