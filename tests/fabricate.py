"""Datasets fabricated in their real on-disk formats, shared by the reader tests and the example-profile tests.

CIFAR-10: the python pickle batches of ``cifar-10-python.tar.gz`` (``data_batch_1..5``, ``test_batch``,
``batches.meta``). Caltech-256: one folder per class named ``NNN.name`` holding ``NNN_XXXX.jpg`` files.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def cifar_images(n: int, first_row: int = 0) -> np.ndarray:
    """N×32×32×3 images whose red channel is the global row and whose green/blue encode y/x."""
    y, x = np.mgrid[0:32, 0:32]
    images = np.empty((n, 32, 32, 3), np.uint8)
    images[..., 0] = (first_row + np.arange(n))[:, None, None]
    images[..., 1], images[..., 2] = y * 8, x * 4
    return images


def cifar_rows(images: np.ndarray) -> np.ndarray:
    """The file layout, written out plane by plane: 1024 red, then 1024 green, then 1024 blue values."""
    return np.concatenate([images[..., c].reshape(len(images), 1024) for c in range(3)], axis=1)


def write_cifar_batch(path: Path, images: np.ndarray, labels: list[int]) -> None:
    """One batch file as the CIFAR-10 python version pickles it (bytes keys, N×3072 uint8 rows)."""
    batch = {
        b"batch_label": path.name.encode(),
        b"labels": labels,
        b"data": cifar_rows(images),
        b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
    }
    path.write_bytes(pickle.dumps(batch))


def write_cifar(folder: Path, per_batch: int = 20, images: np.ndarray | None = None) -> np.ndarray:
    """Five train batches and a test batch of ``per_batch`` images each, labelled ``i % 10`` within a batch.

    Args:
        folder: the ``cifar-10-batches-py`` folder to create.
        per_batch: images per batch file (a multiple of 10 gives every class the same count).
        images: 6×per_batch images, train rows then test rows; default :func:`cifar_images`.

    Returns:
        All images, train rows then test rows.
    """
    folder.mkdir(parents=True)
    meta = {b"label_names": [c.encode() for c in CIFAR_CLASSES], b"num_cases_per_batch": per_batch}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    images = cifar_images(6 * per_batch) if images is None else images
    labels = [i % 10 for i in range(per_batch)]
    for b, name in enumerate(CIFAR_FILES):
        write_cifar_batch(folder / name, images[b * per_batch : (b + 1) * per_batch], labels)
    return images


def save_image(image: Image.Image, path: Path, **options) -> None:
    """Saves a PIL image, creating its folder; ``options`` go to ``Image.save`` (quality, transparency, …)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)


def write_caltech(
    root: Path, folders: list[str], per_class: int, size: tuple[int, int] = (48, 40), grayscale: str | None = None
) -> list[str]:
    """Caltech-256 style class folders of JPEGs (``001.ak47/001_0001.jpg``, numbered from 1, sizes varying).

    Each class has its own colour and every image a bright square at its own position, so images differ.
    ``grayscale`` names a file (relative to root) written as a single-channel JPEG, as Caltech-256 has some.

    Returns:
        The files written, relative to ``root``.
    """
    written = []
    rng = np.random.default_rng(0)
    for c, folder in enumerate(folders):
        number = folder.split(".")[0]
        for k in range(1, per_class + 1):
            ref = f"{folder}/{number}_{k:04d}.jpg"
            width, height = size[0] + 3 * k, size[1] + 2 * c
            pixels = (
                rng.integers(0, 40, (height, width, 3)) + np.array([200 * (c == 0), 200 * (c == 1), 200 * (c >= 2)])
            ).astype(np.uint8)
            pixels[k : k + height // 3, k : k + width // 3] = 255
            image = Image.fromarray(pixels)
            save_image(image.convert("L") if ref == grayscale else image, root / ref, quality=90)
            written.append(ref)
    return written
