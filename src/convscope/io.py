"""The one atomic writer: every artifact goes through a temporary file and a rename.

A crash, a full disk or a reader never sees half a file, and a failed write leaves no
temporary file behind (a half-written ``tmp*.tmp`` would keep a full disk full).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from convscope.errors import ArtifactError


def json_number(value: float | None, decimals: int = 4) -> float | None:
    """A float for a JSON report: rounded to ``decimals`` so clean builds write identical files, None for a missing
    value or NaN/inf (JSON has neither), and ``+ 0.0`` turns -0.0 into 0.0."""
    return None if value is None or not math.isfinite(value) else round(float(value), decimals) + 0.0


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Calls ``write`` on a binary temporary file beside ``path``, then renames it to ``path``.

    Raises:
        ArtifactError: the OS refused the write (no space left, permission, ...); the message
            names the path and the OS error. The temporary file is removed.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False)
    except OSError as error:
        raise ArtifactError(
            f"cannot write {str(path)!r}: {error.strerror or error}; free "
            "space or fix the folder's permissions, then rerun"
        ) from None
    try:
        with tmp:
            write(tmp)
            tmp.flush()  # a full disk often shows only here, when the buffer reaches the OS
        os.chmod(tmp.name, 0o644)  # temporary files are private (0600); artifacts are for sharing
        os.replace(tmp.name, path)
    except BaseException as error:
        Path(tmp.name).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise ArtifactError(
                f"cannot write {str(path)!r}: {error.strerror or error}; free space on that disk "
                f"(or fix its permissions), then rerun"
            ) from None
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Writes UTF-8 text through ``write_atomic``."""
    return write_atomic(path, lambda f: f.write(text.encode()))


def write_npz_atomic(path: str | Path, **arrays: object) -> Path:
    """Writes named arrays to an ``.npz`` file through ``write_atomic``."""
    import numpy as np  # only the jobs that write arrays pay for it

    return write_atomic(path, lambda f: np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()}))


def read_artifact(path: str | Path, step: str) -> Any:
    """Reads a JSON (``.json``) or array (``.npz``, as a dict of arrays) artifact that the ``step`` step wrote.

    Raises:
        ArtifactError: the file is missing or unreadable; the message names it and the step to (re)run.
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{str(path)!r} not found; run the {step} step for this model first")
    try:
        if path.suffix == ".npz":
            import numpy as np

            with np.load(path) as arrays:
                return {key: arrays[key] for key in arrays.files}
        return json.loads(path.read_text())
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ArtifactError(
            f"{str(path)!r} cannot be read ({type(error).__name__}); delete it and rerun the {step} step"
        ) from None


def write_json_atomic(path: str | Path, payload: Any) -> Path:
    """Writes ``payload`` as indented JSON (with a final newline) through ``write_atomic``."""
    return write_text_atomic(path, json.dumps(payload, indent=1) + "\n")
