"""CIFAR-10 from a local copy of the python pickle batches (nothing is downloaded).

Rows are numbered globally: the training rows of ``data_batch_1..5`` in order, then the
rows of ``test_batch``. Validation is carved from training, stratified by class.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from convscope.config import DatasetConfig
from convscope.data import ArraySource, DatasetError, DatasetIndex, stratified_split

BATCH_DIR = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
SIDE = 32
ROW_SIZE = 3 * SIDE * SIDE
HOW_TO_GET = (
    "download the CIFAR-10 python version (cifar-10-python.tar.gz) from "
    "https://www.cs.toronto.edu/~kriz/cifar.html and extract it under dataset.root"
)

# One dataset in memory per process: train, val and test are opened one after another from
# the same batches. Keyed by folder, checked against the files' size and mtime.
_CACHE: dict[str, tuple[tuple, dict]] = {}


def batch_folder(root: str | Path) -> Path:
    """The folder holding the batches: ``root/cifar-10-batches-py`` or ``root`` itself."""
    root = Path(root).resolve()
    nested = root / BATCH_DIR
    if nested.is_dir() or not any((root / name).is_file() for name in (*TRAIN_FILES, TEST_FILE, META_FILE)):
        return nested
    return root


# The globals a CIFAR-10 pickle names: NumPy's array reconstruction and nothing else. The
# builtin containers (dict, list, bytes, int, str) need no global, so a file that names any
# other callable (os.system, builtins.eval, ...) is refused before it can run.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),  # protocol 5
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3 writes bytes at protocol 2: a text-to-bytes conversion, nothing more
}


class _ForbiddenGlobal(Exception):
    """A pickle tried to build something outside ``_ALLOWED_GLOBALS``."""


class _SafeUnpickler(pickle.Unpickler):
    """An unpickler that builds only builtin containers and NumPy arrays: reading runs no code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise _ForbiddenGlobal(f"{module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise DatasetError(f"CIFAR-10 file {str(path)!r} not found; {HOW_TO_GET}")
    try:
        with path.open("rb") as f:
            payload = _SafeUnpickler(f, encoding="bytes").load()
    except _ForbiddenGlobal as error:
        raise DatasetError(
            f"CIFAR-10 file {str(path)!r} tries to build {error} (not allowed in a data file; "
            f"nothing was run); {HOW_TO_GET} again"
        ) from None
    except Exception as error:  # a damaged pickle fails in many ways; all mean the same to the user
        raise DatasetError(
            f"CIFAR-10 file {str(path)!r} is not a readable pickle ({type(error).__name__}); {HOW_TO_GET} again"
        ) from None
    if not isinstance(payload, dict):
        raise DatasetError(
            f"CIFAR-10 file {str(path)!r} holds a {type(payload).__name__}, not a batch dict; {HOW_TO_GET} again"
        )
    return payload


def _read_batch(path: Path, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Reads one batch: (N×3072 uint8 rows, N labels), checked."""
    batch = _unpickle(path)
    if b"data" not in batch or b"labels" not in batch:
        raise DatasetError(f"CIFAR-10 batch {str(path)!r} lacks the b'data' or b'labels' key; {HOW_TO_GET} again")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != ROW_SIZE:
        raise DatasetError(
            f"CIFAR-10 batch {str(path)!r} has data {data.dtype} {data.shape}, "
            f"expected uint8 N×{ROW_SIZE}; {HOW_TO_GET} again"
        )
    in_range = labels.size == 0 or (
        np.issubdtype(labels.dtype, np.integer) and 0 <= labels.min() and labels.max() < n_classes
    )
    if labels.shape != (len(data),) or not in_range:
        raise DatasetError(
            f"CIFAR-10 batch {str(path)!r} needs {len(data)} labels in 0..{n_classes - 1}; {HOW_TO_GET} again"
        )
    return data, labels.astype(np.int64)


def _signature(folder: Path) -> tuple:
    stats = [
        (folder / name).stat() if (folder / name).is_file() else None for name in (*TRAIN_FILES, TEST_FILE, META_FILE)
    ]
    return tuple(s and (s.st_size, s.st_mtime_ns) for s in stats)


def load(folder: Path) -> dict:
    """Reads every batch in ``folder``, once per process.

    Returns:
        ``classes``, ``images`` (N×32×32×3 uint8, train rows then test rows),
        ``labels`` (N) and ``n_train``.
    """
    key, signature = str(folder), _signature(folder)
    cached = _CACHE.get(key)
    if cached is not None and cached[0] == signature:
        return cached[1]
    meta = _unpickle(folder / META_FILE)
    names = meta.get(b"label_names")
    if not isinstance(names, list) or not names:
        raise DatasetError(f"CIFAR-10 file {str(folder / META_FILE)!r} lacks a b'label_names' list; {HOW_TO_GET} again")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    batches = [_read_batch(folder / name, len(classes)) for name in (*TRAIN_FILES, TEST_FILE)]
    rows = np.concatenate([data for data, _ in batches])
    # Each row stores the red, green and blue planes in turn, each 32×32 row-major.
    images = rows.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1)
    arrays = {
        "classes": classes,
        "images": np.ascontiguousarray(images),
        "labels": np.concatenate([labels for _, labels in batches]),
        "n_train": sum(len(data) for data, _ in batches[:-1]),
    }
    _CACHE.clear()  # one dataset at a time keeps the memory bounded
    _CACHE[key] = (signature, arrays)
    return arrays


def prepare(config: DatasetConfig, out_dir: Path) -> DatasetIndex:
    """Checks the local batches and indexes them; validation is carved from training."""
    folder = batch_folder(config.root)
    arrays = load(folder)
    n_train, labels = arrays["n_train"], arrays["labels"]
    kept, held = stratified_split(labels[:n_train].tolist(), config.val_fraction, config.split_seed)
    rows = {"train": kept, "val": held, "test": list(range(n_train, len(labels)))}
    return DatasetIndex(
        kind="cifar10",
        root=str(folder),
        classes=arrays["classes"],
        refs=rows,
        labels={split: labels[r].tolist() for split, r in rows.items()},
    )


def open_split(index: DatasetIndex, data_dir: Path, split: str, transform=None) -> ArraySource:
    """Opens one split from the batches under ``index.root``."""
    arrays = load(Path(index.root))
    rows = np.asarray(index.refs[split], dtype=np.int64)
    labels = arrays["labels"]
    if rows.size and (rows.max() >= len(labels) or not np.array_equal(labels[rows], index.labels[split])):
        raise DatasetError(
            f"CIFAR-10 batches under {index.root!r} changed since they were indexed; rerun the prepare_data step"
        )
    return ArraySource(index.classes, index.labels[split], arrays["images"][rows], None, transform)
