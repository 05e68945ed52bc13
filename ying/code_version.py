"""A version of the code a stage runs, for its fingerprint: a fix re-runs what it touches.

Starting from the modules a stage names (and the modules its run function imports), follow every
import into the same top-level packages, transitively, and hash each module's source. The hash is
of the syntax tree without docstrings, so editing a comment, a docstring or the formatting changes
nothing, while any change to what the code does changes the hash. A package that is reached
counts with every module under it: ``ying.data.tasks`` finds its adapters by listing its folder,
which no import statement shows. Data files a module reads from a folder beside it (instruction
pools, vocabularies: ``*.json``, ``*.yaml``, ``*.txt``, ``*.csv``) count too.

Plumbing is left out (``PLUMBING``): it changes how a stage runs, never what it computes, and the
values of the config are fingerprinted on their own.

Files are read, never imported, so this runs anywhere (the driver, ``ying status``) without side effects.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import inspect
import textwrap
from pathlib import Path
from typing import Callable, Iterable

__all__ = ["PLUMBING", "module_closure", "code_versions", "function_imports"]

# Modules whose edits never change a stage's result: config values are fingerprinted themselves,
# and these only move bytes, print progress, count metrics or schedule stages.
PLUMBING = frozenset({
    "ying", "ying.config", "ying.storage", "ying.progress", "ying.telemetry", "ying.workflow",
    "ying.pipeline", "ying.preflight", "ying.cli", "ying.code_version", "ying.console",
})
DATA_SUFFIXES = (".json", ".yaml", ".yml", ".txt", ".csv")
# Folders whose files are read as config (their values are fingerprinted through the config).
_SKIP_DATA_DIRS = frozenset({"configs", "__pycache__"})


@functools.lru_cache(maxsize=None)
def _package_root(top: str) -> Path | None:
    spec = importlib.util.find_spec(top)  # a top-level name: nothing is imported
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _source_file(module: str) -> Path | None:
    """``a.b.c`` -> ``<root of a>/b/c.py`` or ``.../b/c/__init__.py``; None if it is not a module."""
    top, *rest = module.split(".")
    root = _package_root(top)
    if root is None:
        return None
    base = root.joinpath(*rest) if rest else root
    if base.is_dir() and (base / "__init__.py").is_file():
        return base / "__init__.py"
    candidate = base.with_suffix(".py")
    return candidate if rest and candidate.is_file() else None


def _imports(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Dotted names of every module an AST imports (at any depth, lazy imports included)."""
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base_parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # `from a import b`: b is a submodule when a file says so, else a name inside a.
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if _source_file(sub) is not None else base)
    return found


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def _syntax_hash(source: str) -> str:
    """Hash of the code's meaning: comments, docstrings and formatting left out."""
    tree = _strip_docstrings(ast.parse(source))
    return hashlib.sha256(ast.dump(tree, include_attributes=False).encode()).hexdigest()[:16]


def _parse(path: Path) -> tuple[ast.AST, str]:
    stat = path.stat()
    return _parse_version(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=1024)
def _parse_version(path: Path, mtime_ns: int, size: int) -> tuple[ast.AST, str]:
    # Keyed by modification time and size too: a long-lived process sees edited files.
    source = path.read_text(encoding="utf-8")
    return ast.parse(source), _syntax_hash(source)


def _submodules(package_dir: Path, package: str) -> list[str]:
    names = []
    for path in sorted(package_dir.rglob("*.py")):
        rel = path.relative_to(package_dir).with_suffix("")
        parts = list(rel.parts)
        if "__pycache__" in parts:
            continue
        # Only modules reachable through packages (every folder on the way has an __init__.py).
        if any(not (package_dir.joinpath(*parts[:i]) / "__init__.py").is_file() for i in range(1, len(parts))):
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join([package, *parts]))
    return names


def module_closure(roots: Iterable[str], plumbing: frozenset[str] = PLUMBING) -> list[str]:
    """Every module reachable from ``roots`` by imports within the roots' top-level packages."""
    roots = list(roots)
    tracked = {r.split(".")[0] for r in roots}
    seen: set[str] = set()
    todo = [r for r in roots if r not in plumbing]
    while todo:
        name = todo.pop()
        if name in seen or name in plumbing or name.split(".")[0] not in tracked:
            continue
        path = _source_file(name)
        if path is None:
            continue
        seen.add(name)
        is_package = path.name == "__init__.py"
        tree, _ = _parse(path)
        todo.extend(_imports(tree, name, is_package))
        if is_package:
            todo.extend(_submodules(path.parent, name))
    return sorted(seen)


def _string_constants(tree: ast.AST) -> set[str]:
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def _data_files(modules: Iterable[str]) -> dict[str, Path]:
    """Data files a module reads from a folder beside it (a non-package folder whose name the
    module's code spells, as in ``Path(__file__).parent / "instructions"``), keyed by their path
    from the package's parent folder (``ying/data/instructions/vqa-v2.json``)."""
    files: dict[str, Path] = {}
    for name in modules:
        path, root = _source_file(name), _package_root(name.split(".")[0])
        if path is None or root is None:
            continue
        strings = _string_constants(_parse(path)[0])
        for sub in path.parent.iterdir():
            if (sub.is_dir() and sub.name not in _SKIP_DATA_DIRS and not (sub / "__init__.py").exists()
                    and any(s == sub.name or s.startswith(sub.name + "/") for s in strings)):
                for f in sub.rglob("*"):
                    if f.is_file() and f.suffix in DATA_SUFFIXES:
                        files[str(f.relative_to(root.parent))] = f
    return dict(sorted(files.items()))


def function_imports(fn: Callable) -> list[str]:
    """The modules a function imports in its own body (Ying's stages import lazily)."""
    try:
        source = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):
        return []
    module = getattr(fn, "__module__", "") or ""
    return sorted(_imports(ast.parse(source), module, is_package=False))


def function_hash(fn: Callable) -> str:
    try:
        return _syntax_hash(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError):
        return "unknown"


def code_versions(roots: Iterable[str], run: Callable | None = None) -> dict[str, str]:
    """``{module or data file: hash}`` for everything reachable from ``roots`` (plus ``run``'s imports).

    Data files are keyed by their path relative to their package root's parent, e.g.
    ``ying/data/instructions/vqa-v2.json``.
    """
    roots = list(roots) + (function_imports(run) if run is not None else [])
    modules = module_closure(roots)
    out = {name: _parse(_source_file(name))[1] for name in modules}
    for key, path in _data_files(modules).items():
        out[key] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    if run is not None:
        out[f"{run.__module__}.{run.__qualname__}"] = function_hash(run)
    return out
