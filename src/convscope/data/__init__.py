"""Datasets: preparing an index of a dataset on disk, and reading its splits as images.

``prepare_dataset`` writes ``<out_dir>/index.json`` (and, for the embedded ``shapes``
set, the generated images). Every later step opens a split through that index with
``open_split``, whatever the dataset kind, and gets an ``ImageSource``: RGB PIL images,
integer labels and, where the dataset has them, object masks.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from convscope.config import DatasetConfig
from convscope.errors import DatasetError
from convscope.io import write_json_atomic

SPLITS = ("train", "val", "test")
INDEX_FILE = "index.json"


@dataclass
class DatasetIndex:
    """What ``prepare_dataset`` records of a dataset: enough to read every split again.

    ``refs[split]`` are dataset-specific references to images: row numbers into an
    array store (shapes, cifar10) or paths relative to ``root`` (imagefolder).
    """

    kind: str
    root: str
    classes: list[str]
    refs: dict[str, list[Any]]
    labels: dict[str, list[int]]
    has_masks: bool = False
    skipped: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {split: len(self.labels[split]) for split in SPLITS}


def read_index(index_path: str | Path) -> DatasetIndex:
    """Reads an ``index.json`` written by ``prepare_dataset``."""
    index_path = Path(index_path)
    if not index_path.is_file():
        raise DatasetError(f"dataset index {str(index_path)!r} not found; run the prepare_data step first")
    return DatasetIndex(**json.loads(index_path.read_text()))


class ImageSource:
    """One split of a dataset: ``load(i)`` gives an RGB PIL image, ``__getitem__`` a transformed pair.

    A map-style dataset (``len`` and ``[i]``), which torch's ``DataLoader`` takes as it is: no torch base class,
    so preparing a dataset does not import torch.

    Args:
        classes: display names, index = label.
        labels: label of each image.
        transform: applied to each PIL image by ``__getitem__``.
    """

    def __init__(self, classes: list[str], labels: list[int], transform: Callable | None = None) -> None:
        self.classes = list(classes)
        self.labels = list(labels)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, i: int) -> Image.Image:
        raise NotImplementedError

    def mask(self, i: int) -> np.ndarray | None:
        """Boolean H×W object mask aligned with ``load(i)``, or None when the dataset has none."""
        return None

    def __getitem__(self, i: int) -> tuple[Any, int]:
        image = self.load(i)
        return (self.transform(image) if self.transform else image), self.labels[i]


class ArraySource(ImageSource):
    """Images held in memory as a uint8 N×H×W×3 array (shapes, CIFAR-10)."""

    def __init__(self, classes, labels, images: np.ndarray, masks: np.ndarray | None = None, transform=None) -> None:
        super().__init__(classes, labels, transform)
        self.images = images
        self.masks = masks

    def load(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i])

    def mask(self, i: int) -> np.ndarray | None:
        return None if self.masks is None else self.masks[i]


def _reader(kind: str):
    """The module that reads one dataset kind: ``convscope.data.<kind>`` with ``prepare`` and ``open_split``."""
    return importlib.import_module(f"convscope.data.{kind}")


def prepare_dataset(config: DatasetConfig, out_dir: str | Path) -> DatasetIndex:
    """Generates (shapes) or indexes (cifar10, imagefolder) a dataset and writes ``out_dir/index.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    index = _reader(config.kind).prepare(config, out_dir)
    if len(index.classes) < 2:
        where = f" under {config.root!r}" if config.root else ""
        raise DatasetError(
            f"dataset {config.folder_name!r}{where} has {len(index.classes)} class ({', '.join(index.classes)}); "
            "a classifier needs at least 2: add a folder of images per class"
        )
    write_json_atomic(out_dir / INDEX_FILE, asdict(index))
    return index


def prepare(config: DatasetConfig, index_path: str | Path) -> DatasetIndex:
    """The prepare_data step: ``prepare_dataset`` into the folder of ``index_path``, with a one-line summary."""
    index = prepare_dataset(config, Path(index_path).parent)
    print(f"{config.kind}: {len(index.classes)} classes, " + ", ".join(f"{k} {v}" for k, v in index.counts().items()))
    return index


def open_split(index_path: str | Path, split: str, transform: Callable | None = None) -> ImageSource:
    """Opens one split (train, val or test) of a prepared dataset."""
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    index = read_index(index_path)
    return _reader(index.kind).open_split(index, Path(index_path).parent, split, transform)


def stratified_split(labels: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Splits positions 0..len(labels)-1 into (kept, held_out), holding out ``fraction`` of every class.

    Deterministic for a given seed; each class with at least two images keeps one and holds one out.
    """
    generator = np.random.default_rng(seed)
    labels_array = np.asarray(labels)
    kept, held = [], []
    for label in np.unique(labels_array):
        positions = np.flatnonzero(labels_array == label)
        positions = positions[generator.permutation(len(positions))]
        n_held = int(round(fraction * len(positions)))
        if len(positions) >= 2:
            n_held = min(max(n_held, 1), len(positions) - 1)
        held.extend(positions[:n_held].tolist())
        kept.extend(positions[n_held:].tolist())
    return sorted(kept), sorted(held)


def sample_indices(labels: list[int], num_images: int) -> list[int]:
    """Up to ``num_images`` positions spread over the classes: round-robin in label order, each class's in order."""
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(i)
    queues = [by_class[label] for label in sorted(by_class)]
    depth = max(map(len, queues), default=0)
    picked = [queue[d] for d in range(depth) for queue in queues if d < len(queue)]
    return picked[:num_images]
