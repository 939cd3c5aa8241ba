"""Which package code a job runs, and a fingerprint of it that ignores comments, docstrings and formatting.

A job's code is the static import closure of its entry script (``rules/scripts/<job>.py``): every package module
it imports, directly or transitively, at module level or inside a function, plus the modules that a package loads
by name (the dataset reader of the configured kind), plus the data files of every package in the closure
(``schema.yaml``, the report's Lua filter, ...). The rules pass each job the fingerprint of its code as a
``params:`` value, and Snakemake reruns a job whose params changed: editing a module reruns exactly the jobs
that import it. Only ``ast`` is used, nothing is imported, so the workflow's start-up stays fast.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
_SKIPPED_DIRS = {"__pycache__"}


@functools.cache
def package_modules() -> dict[str, Path]:
    """Every module of the package by dotted name (``convscope.figures.gradcam``), packages by their ``__init__``."""
    modules = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        if _SKIPPED_DIRS.intersection(parts):
            continue
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _with_parents(name: str) -> set[str]:
    # Importing a.b.c runs a/__init__ and a/b/__init__ first.
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


@functools.cache
def imports_of(path: Path, package: str | None = None) -> frozenset[str]:
    """The package modules a source file imports anywhere in its body.

    Args:
        path: A Python source file.
        package: The package the file belongs to, for relative imports; None for a file outside the package.
    """
    modules = package_modules()
    found: set[str] = set()
    for node in _scan(path)[1]:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1] if package else []
                base = ".".join(anchor + ([base] if base else []))
            # ``from a import b`` imports the module a.b when b is one, else the name b of a.
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            if name in modules:
                found |= _with_parents(name)
    return frozenset(found)


def closure(entries: Iterable[str], loaded_by_name: Mapping[str, Iterable[str]] | None = None) -> set[str]:
    """The package modules that running ``entries`` imports.

    Args:
        entries: Dotted module names the job imports first.
        loaded_by_name: Modules that a module loads with ``importlib`` (invisible to ``ast``), by that module.
    """
    modules, loaded_by_name = package_modules(), loaded_by_name or {}
    seen: set[str] = set()
    todo = [name for entry in entries for name in _with_parents(entry)]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = modules[name]
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        todo.extend(imports_of(path, package))
        todo.extend(loaded_by_name.get(name, ()))
    return seen


def script_closure(script: str | Path, loaded_by_name: Mapping[str, Iterable[str]] | None = None) -> set[str]:
    """The package modules a job script (outside the package) imports, transitively."""
    return closure(imports_of(Path(script).resolve()), loaded_by_name)


@functools.cache
def _scan(path: Path) -> tuple[str, tuple[ast.Import | ast.ImportFrom, ...]]:
    """One parse of a source file: the digest of its syntax tree without docstrings (comments and layout do not
    show in a tree), and its import statements."""
    tree = ast.parse(path.read_text(), str(path))
    imports = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            imports.append(node)
        elif isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                if isinstance(body[0].value.value, str):
                    node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest(), tuple(imports)


def code_digest(path: Path) -> str:
    """A hash of a source file's code: its syntax tree without docstrings."""
    return _scan(Path(path))[0]


def data_files(package: str) -> list[Path]:
    """Files a package reads at run time: everything in its folder but Python sources and subpackages."""
    folder = package_modules()[package].parent
    files = []
    for path in sorted(folder.rglob("*")):
        inner = path.relative_to(folder).parts[:-1]
        if not path.is_file() or path.suffix in (".py", ".pyc") or _SKIPPED_DIRS.intersection(inner):
            continue
        if any((folder.joinpath(*inner[: i + 1]) / "__init__.py").exists() for i in range(len(inner))):
            continue  # a subpackage's file belongs to the subpackage
        files.append(path)
    return files


def fingerprint(script: str | Path, loaded_by_name: Mapping[str, Iterable[str]] | None = None) -> str:
    """A short hash of the normalised code a job script runs; it changes exactly when that code changes."""
    script = Path(script).resolve()
    modules = package_modules()
    digest = hashlib.sha256(code_digest(script).encode())
    for name in sorted(script_closure(script, loaded_by_name)):
        digest.update(f"\0{name}\0{code_digest(modules[name])}".encode())
        if modules[name].name == "__init__.py":
            for path in data_files(name):
                digest.update(f"\0{path.relative_to(PACKAGE_DIR)}\0".encode() + path.read_bytes())
    return digest.hexdigest()[:16]
