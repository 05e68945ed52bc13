"""Source adapters: one module per dataset, each knowing only its own files.

Each module exposes ``SPEC`` (a ``TaskSpec``) and ``read_instances(root, split)``, which yields
``SourceInstance`` for good records and ``Reject`` for bad ones and never raises on bad data.
An adapter with settings of its own (LLaVA's image folder) also exposes ``options(data_cfg)``: the
keyword arguments its ``read_instances`` takes, picked from the data config once, at the build's
edge (``adapter_options``), so the build passes them on without knowing any task by name.
The registry below is a plain dict, filled by listing this package's modules: adding a dataset
is one new module and one instruction pool.
"""

from __future__ import annotations

from dataclasses import dataclass
import importlib
import pkgutil
from types import ModuleType
from typing import Any

__all__ = ["TaskSpec", "TASKS", "get_task", "adapter_options"]


@dataclass(frozen=True)
class TaskSpec:
    key: str  # the M3IT config name, e.g. "vqa-v2"
    category: str  # one of schema.CATEGORIES
    lang: str  # "en" or "zh"
    splits: tuple[str, ...]  # record splits this source has, from train/validation/test
    rephrase: bool  # whether its short answers are meant to be rephrased into sentences
    # Part of Stage II's default mix (``train.stage2.tasks: null``). False for data that trains only
    # where a stage lists it: LAION's captions (Stage I) and LLaVA's conversations (the llava variant).
    stage2_mix: bool = True


def _discover() -> dict[str, ModuleType]:
    """Every adapter module in this package, keyed by its SPEC.key.

    Discovery reads the package folder (no registration side effects, no decorators): a new
    dataset is a new module with SPEC and read_instances, and nothing else changes.
    """
    found: dict[str, ModuleType] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue  # shared helpers, not adapters
        module = importlib.import_module(f"{__name__}.{info.name}")
        spec = getattr(module, "SPEC", None)
        if not isinstance(spec, TaskSpec) or not callable(getattr(module, "read_instances", None)):
            raise TypeError(f"{module.__name__} is in the adapters package but lacks SPEC or read_instances")
        if spec.key in found:
            raise ValueError(f"task key {spec.key!r} is claimed by {found[spec.key].__name__} and {module.__name__}")
        found[spec.key] = module
    return found


TASKS: dict[str, ModuleType] = _discover()


def get_task(key: str) -> ModuleType:
    """The adapter module for a task key; a clear error listing the known keys otherwise."""
    try:
        return TASKS[key]
    except KeyError:
        raise KeyError(f"unknown task {key!r}; known tasks: {sorted(TASKS)}") from None


def adapter_options(key: str, data_cfg: Any) -> dict[str, Any]:
    """Keyword options for task ``key``'s ``read_instances`` from ``data_cfg`` (a ``DataConfig``):
    its module's ``options(data_cfg)``, or none for an adapter that has no settings."""
    options = getattr(get_task(key), "options", None)
    return dict(options(data_cfg)) if callable(options) else {}


def rephrased_tasks(configured: list[str] | None = None) -> list[str]:
    """``rephrase.tasks`` as set, or (None) every task whose adapter marks its answers for rephrasing."""
    if configured is not None:
        return list(configured)
    return sorted(key for key, module in TASKS.items() if module.SPEC.rephrase)
