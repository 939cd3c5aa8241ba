"""The embedded ``shapes`` dataset: ten shape classes on textured, cluttered backgrounds.

Generated deterministically from a seed, with a ground-truth object mask per image. A
spurious correlation is built in on purpose: in training, most images of one class
(``spurious_class``) lie on one background texture that the other classes rarely get,
while in test every class gets every texture equally often. A model that learns the
shortcut misclassifies test images on that texture, and Grad-CAM shows it looking at
the background: the failure-case figures have a real story to tell.
"""

from __future__ import annotations

import colorsys
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from convscope.config import DatasetConfig, ShapesConfig
from convscope.data import ArraySource, DatasetError, DatasetIndex, stratified_split
from convscope.io import write_atomic

CLASSES = ("circle", "square", "triangle", "star", "cross", "hexagon", "ring", "diamond", "crescent", "arrow")
TEXTURES = ("stripes", "checker", "dots", "noise", "waves")
ARRAY_FILE = "shapes.npz"
SUPERSAMPLE = 4
# Other classes get the spurious texture this many times less often than the others in training.
SPURIOUS_DILUTION = 4


def _regular_polygon(sides: int, radius: float = 1.0, phase: float = 0.0) -> np.ndarray:
    angles = phase + 2 * np.pi * np.arange(sides) / sides
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    angles = -np.pi / 2 + np.pi * np.arange(2 * points) / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


_POLYGONS = {
    "square": _regular_polygon(4, 1.0, np.pi / 4),
    "triangle": _regular_polygon(3, 1.0, -np.pi / 2),
    "star": _star(),
    "cross": np.array(
        [
            [-0.3, -1],
            [0.3, -1],
            [0.3, -0.3],
            [1, -0.3],
            [1, 0.3],
            [0.3, 0.3],
            [0.3, 1],
            [-0.3, 1],
            [-0.3, 0.3],
            [-1, 0.3],
            [-1, -0.3],
            [-0.3, -0.3],
        ]
    ),
    "hexagon": _regular_polygon(6),
    "diamond": np.array([[0, -1], [0.55, 0], [0, 1], [-0.55, 0]]),
    "arrow": np.array([[-1, -0.25], [0.15, -0.25], [0.15, -0.7], [1, 0], [0.15, 0.7], [0.15, 0.25], [-1, 0.25]]),
}


def _shape_alpha(name: str, size: int, center: tuple[float, float], radius: float, angle: float) -> np.ndarray:
    """Anti-aliased coverage (H×W float in [0,1]) of one shape, drawn supersampled."""
    big = size * SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy, r = center[0] * SUPERSAMPLE, center[1] * SUPERSAMPLE, radius * SUPERSAMPLE

    def disc(x: float, y: float, rad: float, fill: int) -> None:
        draw.ellipse([x - rad, y - rad, x + rad, y + rad], fill=fill)

    if name == "circle":
        disc(cx, cy, r, 255)
    elif name == "ring":
        disc(cx, cy, r, 255)
        disc(cx, cy, 0.55 * r, 0)
    elif name == "crescent":
        disc(cx, cy, r, 255)
        disc(cx + 0.5 * r * math.cos(angle), cy + 0.5 * r * math.sin(angle), 0.85 * r, 0)
    else:
        rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        points = _POLYGONS[name] @ rotation.T * r + np.array([cx, cy])
        draw.polygon([tuple(p) for p in points], fill=255)
    return np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255.0


def _texture(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A two-tone pattern as an H×W mixing weight in [0,1]."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    theta = rng.uniform(0, np.pi)
    u = x * math.cos(theta) + y * math.sin(theta)
    v = -x * math.sin(theta) + y * math.cos(theta)
    period = rng.uniform(6, 12) * size / 96
    if name == "stripes":
        return (np.sin(2 * np.pi * u / period) > 0).astype(np.float32)
    if name == "checker":
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    if name == "dots":
        du, dv = (u % (1.6 * period)) - 0.8 * period, (v % (1.6 * period)) - 0.8 * period
        return (du**2 + dv**2 < (0.45 * period) ** 2).astype(np.float32)
    if name == "waves":
        return 0.5 + 0.25 * (np.sin(2 * np.pi * u / (2 * period)) + np.sin(2 * np.pi * v / (2.5 * period)))
    coarse = rng.random((size // 8 + 2, size // 8 + 2)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)).clip(0, 1)


def _colour(rng: np.random.Generator, saturation: tuple[float, float], value: tuple[float, float]) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(*saturation), rng.uniform(*value)), dtype=np.float32)


def _clutter(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A few random strokes and blobs that are not class shapes: (alpha H×W, colour H×W×3)."""
    canvas = Image.new("L", (size, size), 0)
    colours = Image.new("RGB", (size, size), 0)
    draw, paint = ImageDraw.Draw(canvas), ImageDraw.Draw(colours)
    for _ in range(rng.integers(2, 5)):
        colour = tuple(int(255 * c) for c in _colour(rng, (0.1, 0.5), (0.3, 0.8)))
        x0, y0 = rng.uniform(0, size, 2)
        if rng.random() < 0.6:
            x1, y1 = x0 + rng.normal(0, size / 4), y0 + rng.normal(0, size / 4)
            width = int(rng.integers(1, 3))
            for target, fill in ((draw, 255), (paint, colour)):
                target.line([x0, y0, x1, y1], fill=fill, width=width)
        else:
            r = rng.uniform(size / 40, size / 20)
            for target, fill in ((draw, 255), (paint, colour)):
                target.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=fill)
    return np.asarray(canvas, dtype=np.float32) / 255.0, np.asarray(colours, dtype=np.float32) / 255.0


def render(label: int, texture: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draws one image of class ``CLASSES[label]`` on ``texture``: (uint8 H×W×3 image, bool H×W mask)."""
    dark, light = _colour(rng, (0.0, 0.3), (0.25, 0.4)), _colour(rng, (0.0, 0.3), (0.5, 0.65))
    weight = _texture(texture, size, rng)[..., None]
    image = dark * (1 - weight) + light * weight
    clutter_alpha, clutter_colour = _clutter(size, rng)
    image = image * (1 - clutter_alpha[..., None]) + clutter_colour * clutter_alpha[..., None]
    radius = rng.uniform(0.2, 0.32) * size
    center = tuple(rng.uniform(radius + 1, size - radius - 1, 2))
    alpha = _shape_alpha(CLASSES[label], size, center, radius, rng.uniform(0, 2 * np.pi))[..., None]
    image = image * (1 - alpha) + _colour(rng, (0.7, 1.0), (0.85, 1.0)) * alpha
    image = image + rng.normal(0, 0.03, image.shape).astype(np.float32)
    return (image.clip(0, 1) * 255).round().astype(np.uint8), alpha[..., 0] > 0.5


def _texture_weights(label: int, train: bool, spurious_label: int | None, config: ShapesConfig) -> np.ndarray:
    weights = np.ones(len(TEXTURES))
    if train and spurious_label is not None:
        spurious = TEXTURES.index(config.spurious_texture)
        if label == spurious_label:
            weights = np.full(len(TEXTURES), (1 - config.spurious_fraction) / (len(TEXTURES) - 1))
            weights[spurious] = config.spurious_fraction
        else:
            weights[spurious] = 1 / SPURIOUS_DILUTION
    return weights / weights.sum()


def generate(config: ShapesConfig) -> dict[str, np.ndarray]:
    """Generates the whole dataset: training images first, then test images.

    Returns:
        Arrays ``images`` (N×H×W×3 uint8), ``masks`` (N×H×W bool), ``labels``,
        ``textures`` (index into TEXTURES) and ``is_test`` (bool).
    """
    if config.spurious_class is not None and config.spurious_class not in CLASSES:
        raise DatasetError(
            f"config dataset.shapes.spurious_class = {config.spurious_class!r} "
            f"is not a shapes class; choose one of {', '.join(CLASSES)} or "
            "null"
        )
    spurious_label = None if config.spurious_class is None else CLASSES.index(config.spurious_class)
    rng = np.random.default_rng(config.seed)
    plan = [(label, False) for label in range(len(CLASSES)) for _ in range(config.train_per_class)]
    plan += [(label, True) for label in range(len(CLASSES)) for _ in range(config.test_per_class)]
    size = config.image_size
    images = np.empty((len(plan), size, size, 3), np.uint8)
    masks = np.empty((len(plan), size, size), bool)
    textures = np.empty(len(plan), np.int64)
    for row, (label, is_test) in enumerate(tqdm(plan, desc="generating shapes", unit="img")):
        textures[row] = rng.choice(len(TEXTURES), p=_texture_weights(label, not is_test, spurious_label, config))
        images[row], masks[row] = render(label, TEXTURES[textures[row]], size, rng)
    labels = np.array([label for label, _ in plan], np.int64)
    return {
        "images": images,
        "masks": masks,
        "labels": labels,
        "textures": textures,
        "is_test": np.array([t for _, t in plan]),
    }


def prepare(config: DatasetConfig, out_dir: Path) -> DatasetIndex:
    """Generates the dataset into ``out_dir/shapes.npz`` and returns its index (val carved from train)."""
    arrays = generate(config.shapes)
    # Uncompressed: the noisy images shrink only to 65%, and every job that opens the data would pay for
    # decompressing them (0.35 s; writing took 1.9 s longer).
    write_atomic(out_dir / ARRAY_FILE, lambda f: np.savez(f, **arrays))
    train_rows = np.flatnonzero(~arrays["is_test"])
    train_labels = arrays["labels"][train_rows].tolist()
    kept, held = stratified_split(train_labels, config.val_fraction, config.split_seed)
    rows = {
        "train": train_rows[kept].tolist(),
        "val": train_rows[held].tolist(),
        "test": np.flatnonzero(arrays["is_test"]).tolist(),
    }
    return DatasetIndex(
        kind="shapes",
        root=str(out_dir.resolve()),
        classes=list(CLASSES),
        refs=rows,
        labels={split: arrays["labels"][r].tolist() for split, r in rows.items()},
        has_masks=True,
    )


def load_arrays(data_dir: Path) -> dict[str, np.ndarray]:
    """Reads the generated arrays back (images, masks, labels, textures, is_test)."""
    path = Path(data_dir) / ARRAY_FILE
    if not path.is_file():
        raise DatasetError(f"shapes data {str(path)!r} not found; run the prepare_data step first")
    with np.load(path) as arrays:
        return {key: arrays[key] for key in arrays.files}


def open_split(index: DatasetIndex, data_dir: Path, split: str, transform=None) -> ArraySource:
    """Opens one split of the generated dataset, object masks included."""
    arrays = load_arrays(data_dir)
    rows = np.asarray(index.refs[split], dtype=np.int64)
    return ArraySource(index.classes, index.labels[split], arrays["images"][rows], arrays["masks"][rows], transform)
