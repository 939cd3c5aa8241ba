"""Which package code a job runs, and a fingerprint of it that ignores comments, docstrings and formatting.

A job's code is the static import closure of its entry script (``rules/scripts/<job>.py``): every package module
it imports, directly or transitively, at module level or inside a function, plus the modules that a package loads
by name (the dataset reader of the configured kind), plus the data files of every package in the closure
(``schema.yaml``, the report's Lua filter, ...). The rules pass each job the fingerprint of its code as a
``params:`` value, and Snakemake reruns a job whose params changed: editing a module reruns exactly the jobs
that import it. Only ``ast`` is used, nothing is imported, so the workflow's start-up stays fast; within
``scan_cache`` each file's parse is kept between runs, so a run after no edit parses nothing.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import json
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

from convscope.errors import ArtifactError
from convscope.io import write_json_atomic

PACKAGE_DIR = Path(__file__).resolve().parent
_SKIPPED_DIRS = {"__pycache__"}
_CACHE_FORMAT = 1
# A file changed this recently is not cached: a second edit within the file system's timestamp granularity
# could leave its size and times as they were (git's "racy" entries).
RACY_SECONDS = 2.0


class Import(NamedTuple):
    """One import statement: ``import a.b`` (``from_`` False) or ``from ..module import names`` (level 2)."""

    from_: bool
    module: str | None
    level: int
    names: tuple[str, ...]


class _Scan(NamedTuple):
    digest: str  # of the syntax tree without docstrings
    imports: tuple[Import, ...]


# The scans stored by ``scan_cache`` while it is open (absolute path -> entry), and those this run used.
_stored: dict[str, dict] | None = None
_used: dict[str, dict] = {}


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
    for statement in _scan(path).imports:
        if not statement.from_:
            names = list(statement.names)
        else:
            base = statement.module or ""
            if statement.level:
                anchor = package.split(".")[: len(package.split(".")) - statement.level + 1] if package else []
                base = ".".join(anchor + ([base] if base else []))
            # ``from a import b`` imports the module a.b when b is one, else the name b of a.
            names = [base] + [f"{base}.{name}" for name in statement.names]
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
def _scan(path: Path) -> _Scan:
    """One parse of a source file, or its entry in the open ``scan_cache`` while the file's size, inode and
    times are those it was made from."""
    stat = path.stat()  # before the read: a file changed while it is read gets a new stat, so no stale entry
    key = [stat.st_size, stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns]
    scan = _stored_scan(str(path), key) or _parse(path)
    if _stored is not None and time.time_ns() - max(stat.st_mtime_ns, stat.st_ctime_ns) > RACY_SECONDS * 1e9:
        imports = [[i.from_, i.module, i.level, list(i.names)] for i in scan.imports]
        _used[str(path)] = {"stat": key, "digest": scan.digest, "imports": imports}
    return scan


def _stored_scan(path: str, key: list[int]) -> _Scan | None:
    entry = (_stored or {}).get(path)
    try:
        if entry["stat"] == key:
            imports = tuple(Import(bool(f), m, int(lv), tuple(names)) for f, m, lv, names in entry["imports"])
            return _Scan(str(entry["digest"]), imports)
    except (KeyError, TypeError, ValueError):  # no entry, or one edited by hand: parse the file
        pass
    return None


def _parse(path: Path) -> _Scan:
    """The digest of a file's syntax tree without docstrings (comments and layout do not show in a tree), and
    its import statements."""
    tree = ast.parse(path.read_text(), str(path))
    imports = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports.append(Import(False, None, 0, tuple(alias.name for alias in node.names)))
        elif isinstance(node, ast.ImportFrom):
            imports.append(Import(True, node.module, node.level, tuple(alias.name for alias in node.names)))
        elif isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                if isinstance(body[0].value.value, str):
                    node.body = body[1:] or [ast.Pass()]
    return _Scan(hashlib.sha256(ast.dump(tree).encode()).hexdigest(), tuple(imports))


@contextlib.contextmanager
def scan_cache(path: str | Path) -> Iterator[None]:
    """Within the block, each file's scan is taken from ``path`` (JSON) when the file is unchanged since it was
    stored, and ``path`` is rewritten on exit with the scans the block used.

    An entry is used only while the file's size, inode, modification and change times are those it was made
    from (the change time cannot be set back from user space), and a file changed in the last ``RACY_SECONDS``
    is not stored. An unreadable cache is ignored and one that cannot be written is left as it was: the cache
    only saves time.
    """
    global _stored
    path = Path(path)
    try:
        content = json.loads(path.read_text())
        stored = content["files"] if content.get("format") == _CACHE_FORMAT else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        stored = {}
    _stored = stored if isinstance(stored, dict) else {}
    _forget()
    try:
        yield
        if _used != _stored:
            with contextlib.suppress(ArtifactError):
                write_json_atomic(path, {"format": _CACHE_FORMAT, "files": dict(sorted(_used.items()))})
    finally:
        _stored = None
        _forget()


def _forget() -> None:
    # Scans made outside the block would not be stored, and those made inside must not outlive it.
    _used.clear()
    _scan.cache_clear()
    imports_of.cache_clear()


def code_digest(path: Path) -> str:
    """A hash of a source file's code: its syntax tree without docstrings."""
    return _scan(Path(path)).digest


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
