"""Figures that explain a trained convscope model, one module per family.

Each family has one public ``render_<family>(checkpoint_path, ..., out_dir, **settings) -> list[Path]`` that
writes PNGs (150 dpi) and the numbers behind them (``.npz``/``.csv``) into ``out_dir`` and returns the paths.
This package holds what the families share: atomic writers, model loading, layer lookup and tiling.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, same output on every machine

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from torch import nn  # noqa: E402

from convscope.errors import LayerError
from convscope.io import write_atomic
from convscope.config import ModelConfig  # noqa: E402
from convscope.models import model_from_checkpoint  # noqa: E402
from convscope.training import load_checkpoint  # noqa: E402

DPI = 150
SMALL = 8  # pt: the smallest font any figure uses (panel titles, annotations, dense tick labels)


def _write_atomic(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    return write_atomic(path, write)


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    """Writes ``fig`` as a PNG at 150 dpi (atomically) and closes it; figures use constrained layout, so nothing is cut."""
    try:
        return _write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=DPI))
    finally:
        plt.close(fig)


def save_arrays(path: str | Path, **arrays: object) -> Path:
    """Writes named arrays to an ``.npz`` file atomically."""
    return _write_atomic(path, lambda f: np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()}))


def save_text(path: str | Path, text: str) -> Path:
    """Writes UTF-8 text atomically."""
    return _write_atomic(path, lambda f: f.write(text.encode()))


def load_model(checkpoint_path: str | Path) -> tuple[dict, ModelConfig, nn.Module]:
    """The checkpoint dict, its model config and the trained model (eval mode, CPU)."""
    checkpoint = load_checkpoint(checkpoint_path)
    return checkpoint, ModelConfig.from_dict(checkpoint["config"]), model_from_checkpoint(checkpoint)


def sample_indices(labels: list[int], num_images: int) -> list[int]:
    """Up to ``num_images`` positions, round-robin over the classes present (in label order), each class's in index order."""
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(i)
    queues = [by_class[label] for label in sorted(by_class)]
    picked = [queue[depth] for depth in range(max(map(len, queues), default=0)) for queue in queues if depth < len(queue)]
    return picked[:num_images]


def model_label(config: ModelConfig) -> str:
    """How titles name a model: its configured name, with the architecture when that differs."""
    return config.name if config.name == config.arch else f"{config.name} ({config.arch})"


def stages(model: nn.Module) -> dict[str, nn.Module]:
    """Stages in forward order: the top-level children, a ``features`` Sequential (MobileNet, VGG, …) split into its own."""
    out: dict[str, nn.Module] = {}
    for name, child in model.named_children():
        if name == "features" and isinstance(child, nn.Sequential):
            out.update({f"{name}.{sub}": block for sub, block in child.named_children()})
        else:
            out[name] = child
    return out


def conv_layers(model: nn.Module) -> dict[str, nn.Conv2d]:
    """Every Conv2d of the model by its ``named_modules`` name, in module order."""
    return {name: module for name, module in model.named_modules() if isinstance(module, nn.Conv2d)}


def check_layers(model: nn.Module, layers: Iterable[str], valid: Iterable[str], kind: str) -> list[str]:
    """Returns ``layers`` as a list, or raises ValueError naming the first unknown one and listing ``valid``."""
    if isinstance(layers, str):  # list("layer4") would check each letter
        raise LayerError(f"layers must be a list of {kind} names, got the string {layers!r}; write [{layers!r}]")
    layers, valid = list(layers), list(valid)
    if not layers:
        raise LayerError(f"layers is empty; name at least one {kind} of {type(model).__name__}: {', '.join(valid)}")
    for name in layers:
        if name not in valid:
            raise LayerError(f"unknown {kind} {name!r} in {type(model).__name__}; valid {kind}s: {', '.join(valid)}")
    return layers


def pair(value: int | tuple[int, ...]) -> str:
    """A kernel or stride as ``7×7`` (ints are square)."""
    values = (value, value) if isinstance(value, int) else tuple(value)
    return "×".join(map(str, values))


def tile(images: torch.Tensor, pad_value: float) -> np.ndarray:
    """N×C×h×w images tiled into one near-square H×W×C array (C is 1 or 3), ``pad_value`` between tiles."""
    count, _, height, width = images.shape
    # Tiles per row so the grid comes out about square, also for 1×7 or 3×1 kernels.
    nrow = min(count, math.ceil(math.sqrt(count * (height + 1) / (width + 1))))
    grid = torchvision.utils.make_grid(images, nrow=nrow, padding=1, pad_value=pad_value)
    # make_grid copies a single channel to three; keep one so colour maps apply.
    return grid[: images.shape[1]].permute(1, 2, 0).numpy()
