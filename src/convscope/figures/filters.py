"""Filters: the first conv layer's kernels as RGB images, deeper conv kernels as channel-mean maps."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch import nn

from convscope.errors import LayerError
from convscope.evaluation import load_model
from convscope.figures.drawing import SMALL, check_cmap, model_label, pair, save_figure, tile
from convscope.io import write_npz_atomic
from convscope.models import conv_layers, find_layers

MAX_SHOWN = 64  # deeper layers: the first 64 filters, an 8×8 grid that stays legible


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """The first Conv2d in module order that reads the 3 input channels."""
    for name, conv in conv_layers(model).items():
        if conv.in_channels == 3:
            return name, conv
    raise LayerError(f"{type(model).__name__} has no Conv2d with 3 input channels; filters need an RGB first layer")


def default_deep_layer(model: nn.Module) -> str:
    """The last Conv2d with a kernel larger than 1×1 (a 1×1 kernel is a single number per channel)."""
    spatial = [name for name, conv in conv_layers(model).items() if conv.kernel_size != (1, 1)]
    if not spatial:
        raise LayerError(f"{type(model).__name__} has no Conv2d with a kernel larger than 1×1; pass layers explicitly")
    return spatial[-1]


def _render_first(model: nn.Module, label: str, out_dir: Path) -> list[Path]:
    name, conv = first_conv(model)
    weight = conv.weight.detach().float()
    low, high = weight.min().item(), weight.max().item()
    # One scaling for every filter and channel, so colours compare across filters: 0 → low, 1 → high.
    scaled = (weight - low) / (high - low) if high > low else torch.full_like(weight, 0.5)
    grid = tile(scaled, pad_value=1.0)

    fig, ax = plt.subplots(figsize=(6, 6.4), layout="constrained")
    ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    fig.suptitle(
        f"{label}: first conv layer {name}\n{len(weight)} filters, {pair(conv.kernel_size)} kernels, shown as RGB"
    )
    fig.supxlabel(
        f"one min-max scaling shared by all filters: weight {low:.3g} → black, {high:.3g} → white", fontsize=SMALL
    )
    return [
        save_figure(fig, out_dir / "filters_first.png"),
        write_npz_atomic(
            out_dir / "filters_first.npz", layer=name, weight=weight.numpy(), grid=grid, low=low, high=high
        ),
    ]


def _render_mean(model: nn.Module, name: str, label: str, cmap: str, out_dir: Path) -> list[Path]:
    conv = conv_layers(model)[name]
    weight = conv.weight.detach().float()
    channel_mean = weight.mean(dim=1)  # one k×k map per output filter
    shown = channel_mean[:MAX_SHOWN]
    limit = shown.abs().max().item() or 1.0  # symmetric, so white is exactly 0
    grid = tile(shown[:, None], pad_value=float("nan"))[..., 0]

    inputs = weight.shape[1]
    depthwise = ", depthwise" if conv.groups == conv.in_channels > 1 else ""
    colours = plt.get_cmap(cmap).with_extremes(bad="0.6")  # grey gaps (NaN), apart from the white of 0
    fig, ax = plt.subplots(figsize=(6.6, 6), layout="constrained")
    image = ax.imshow(grid, cmap=colours, vmin=-limit, vmax=limit, interpolation="nearest")
    ax.set_axis_off()
    fig.suptitle(
        f"{label}: {name}\n{pair(conv.kernel_size)} kernels{depthwise}, first {len(shown)} of {len(weight)} filters,\n"
        f"each the mean over its {inputs} input channel{'s' * (inputs != 1)}"
    )
    fig.colorbar(image, ax=ax, shrink=0.8, label="mean weight")
    return [
        save_figure(fig, out_dir / f"filters_{name}.png"),
        write_npz_atomic(out_dir / f"filters_{name}.npz", layer=name, channel_mean=channel_mean.numpy(), grid=grid),
    ]


def render_filters(
    checkpoint_path: str | Path,
    index_path: str | Path,
    out_dir: str | Path,
    layers: list[str] | None = None,
    cmap: str = "RdBu_r",
) -> list[Path]:
    """Writes the first conv layer as an RGB filter grid and each deeper layer as channel-mean maps.

    Args:
        checkpoint_path: a convscope checkpoint.
        index_path: the dataset index; unused here, accepted so every family is called alike.
        out_dir: folder for the files (created).
        layers: Conv2d names for the channel-mean grids; None takes the last conv with a kernel above 1×1.
        cmap: diverging colour map of the channel-mean grids (centred at 0).

    Returns:
        ``filters_first.png/.npz`` and ``filters_<layer>.png/.npz`` per layer.

    Raises:
        LayerError: a layer is not a Conv2d of the model (the message lists the valid names).
    """
    check_cmap(cmap)
    _, config, model = load_model(checkpoint_path)
    layers = find_layers(
        model, [default_deep_layer(model)] if layers is None else layers, list(conv_layers(model)), "conv layer"
    )
    out_dir = Path(out_dir)
    label = model_label(config)
    files = _render_first(model, label, out_dir)
    for name in layers:
        files += _render_mean(model, name, label, cmap, out_dir)
    return files


def render(inputs: Mapping[str, str], out_dir: Path, settings: dict) -> list[Path]:
    """The family's entry point (see ``convscope.figures``)."""
    return render_filters(inputs["checkpoint"], inputs["index"], out_dir, **settings)
