"""Writing artifacts atomically: through a temporary file beside the target and a rename.

A crash, a full disk or a reader never sees half a file, and a failed write leaves no temporary behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Calls ``write`` on a binary temporary file, then renames it to ``path`` (folders created).

    Returns:
        ``path`` as a Path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as tmp:
        try:
            write(tmp)
        except BaseException:
            tmp.close()
            os.unlink(tmp.name)
            raise
    os.chmod(tmp.name, 0o644)  # temporary files are private (0600); artifacts are for sharing
    os.replace(tmp.name, path)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Writes UTF-8 text atomically."""
    return write_atomic(path, lambda f: f.write(text.encode()))


def write_json_atomic(path: str | Path, payload: Any) -> Path:
    """Writes JSON (indent 1, trailing newline) atomically."""
    return write_text_atomic(path, json.dumps(payload, indent=1) + "\n")
