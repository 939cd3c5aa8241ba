"""Grad-CAM figures: maps at several depths for sample test images, and maps for competing classes.

``render_gradcam`` writes ``gradcam.npz`` (the arrays behind the figure, contract below), ``gradcam_layers.png``,
``gradcam_classes.png`` and ``gradcam_classes.npz``. ``gradcam.npz`` holds exactly: ``inputs`` (the float32
N×C×H×W tensors fed to the model), ``targets`` (explained class, int64), ``labels`` (true class, int64),
``layers`` (module names, str) and per layer ``cam_<layer>`` (N×H×W float32 in [0, 1], the engine's maps) and
``flags_<layer>`` (bool N, True where the map is blank or non-finite).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from convscope.cam import CamResult, grad_cam
from convscope.config import ModelConfig
from convscope.data import sample_indices
from convscope.errors import ConfigError, DatasetError
from convscope.evaluation import open_model_and_split, read_test_predictions
from convscope.figures import drawing
from convscope.io import write_npz_atomic
from convscope.methods import METHOD_NAMES
from convscope.models import default_cam_layers, find_layers
from convscope.transforms import display_images


def _layers_figure(
    config: ModelConfig,
    images: np.ndarray,
    result: CamResult,
    labels: list[int],
    classes: list[str],
    names: list[str],
    method: str,
    cmap: str,
    alpha: float,
) -> Figure:
    layers = list(result.maps)
    probabilities = result.logits.softmax(1)
    blank = result.flag_count()
    title = f"{drawing.model_label(config)}: {METHOD_NAMES[method]} for the predicted class, per layer" + (
        f" ({drawing.plural(blank, 'blank map')})" if blank else ""
    )
    fig, axes = drawing.grid(len(images), 1 + len(layers), title, label_inches=1.2)
    for row, (image, label, target) in enumerate(zip(images, labels, result.targets.tolist())):
        axes[row, 0].imshow(image)
        drawing.clear_axes(axes[row, 0])
        colour = "black" if label == target else "firebrick"
        axes[row, 0].set_ylabel(
            (
                f"{names[row]}\ntrue: {classes[label]}\npred: {classes[target]} "
                f"({drawing.prob(probabilities[row, target])})"
            ),
            rotation=0,
            ha="right",
            va="center",
            fontsize=drawing.SMALL,
            color=colour,
        )
        for col, layer in enumerate(layers, start=1):
            drawing.draw_cam(
                axes[row, col], image, result.maps[layer][row].numpy(), bool(result.flags[layer][row]), cmap, alpha
            )
    counts = [result.flag_count(layer) for layer in layers]
    titles = [layer + (f"\n{drawing.plural(n, 'blank map')}" if n else "") for layer, n in zip(layers, counts)]
    drawing.title_cam_grid(fig, axes, titles, cmap)
    return fig


def render_gradcam(
    checkpoint_path: str | Path,
    index_path: str | Path,
    out_dir: str | Path,
    layers: Sequence[str] | None = None,
    num_images: int = 8,
    method: str = "gradcam",
    cmap: str = "jet",
    alpha: float = 0.45,
    split: str = "test",
    correct_only: bool = False,
    predictions_path: str | Path | None = None,
) -> list[Path]:
    """Grad-CAM of sample images at several layers, and for the predicted, true and runner-up classes.

    Samples are the first images of each class in index order (with ``correct_only``, of the correctly
    classified ones), taken round-robin over the classes. One
    ``grad_cam`` call explains the predicted class at every layer; the class figure explains the last
    (deepest) layer once per target set.

    Args:
        checkpoint_path: A convscope checkpoint.
        index_path: The dataset's ``index.json``.
        out_dir: Folder for the outputs (created).
        layers: Module names; None uses :func:`default_cam_layers`.
        num_images: How many images (capped at the split's size).
        method: one of :data:`convscope.methods.METHODS`.
        cmap: Matplotlib colour map of the heatmaps.
        alpha: Opacity of the heatmap over the image.
        split: Which split to sample.
        correct_only: Sample only test images the model classifies correctly (needs ``predictions_path``).
        predictions_path: The model's ``predictions.csv`` from evaluate.

    Returns:
        Paths of ``gradcam.npz``, ``gradcam_layers.png``, ``gradcam_classes.npz`` and ``gradcam_classes.png``.
    """
    if num_images < 1:
        raise ConfigError(f"num_images must be >= 1, got {num_images}")
    drawing.check_heatmap_options(method, cmap, alpha)
    config, model, source = open_model_and_split(checkpoint_path, index_path, split)
    layers = list(layers) if layers is not None else default_cam_layers(model, config.arch)
    layers = find_layers(model, layers)  # an unknown layer fails here, before any work
    if len(source) == 0:
        raise DatasetError(f"split {split!r} of {str(index_path)!r} has no images")
    out_dir = Path(out_dir)

    candidates = list(range(len(source)))
    if correct_only:
        if split != "test" or predictions_path is None:
            raise ConfigError("correct_only needs the test split and the model's predictions.csv")
        rows = read_test_predictions(predictions_path, source)
        candidates = rows.index[rows["pred"] == rows["label"]].tolist()
        if not candidates:
            raise ConfigError(
                f"no test image is classified correctly by {config.name}; set figures.gradcam.correct_only: false"
            )
    indices = [candidates[i] for i in sample_indices([source.labels[i] for i in candidates], num_images)]
    inputs = torch.stack([source[i][0] for i in indices]).float()
    labels = [source.labels[i] for i in indices]
    result = grad_cam(model, inputs, layers, method=method)
    images = display_images(inputs, config)
    arrays = {
        "inputs": inputs.numpy(),
        "targets": result.targets.numpy().astype(np.int64),
        "labels": np.asarray(labels, np.int64),
        "layers": np.asarray(list(result.maps), dtype=str),
    }
    for layer in result.maps:
        arrays[f"cam_{layer}"] = result.maps[layer].numpy().astype(np.float32)
        arrays[f"flags_{layer}"] = result.flags[layer].numpy().astype(bool)
    paths = [write_npz_atomic(out_dir / "gradcam.npz", **arrays)]
    names = [f"{split} image {i}" for i in indices]  # the index the report and predictions.csv use
    fig = _layers_figure(config, images, result, labels, source.classes, names, method, cmap, alpha)
    paths.append(drawing.save_figure(fig, out_dir / "gradcam_layers.png"))
    paths += _render_classes(
        config,
        model,
        inputs,
        images,
        labels,
        source.classes,
        indices,
        names,
        layers[-1],
        result.logits,
        out_dir,
        method,
        cmap,
        alpha,
    )
    return paths


def _render_classes(
    config: ModelConfig,
    model: nn.Module,
    inputs: torch.Tensor,
    images: np.ndarray,
    labels: list[int],
    classes: list[str],
    indices: list[int],
    names: list[str],
    layer: str,
    logits: torch.Tensor,
    out_dir: Path,
    method: str,
    cmap: str,
    alpha: float,
) -> list[Path]:
    probabilities = logits.softmax(1)
    ranked = logits.argsort(1, descending=True)
    target_sets = {"pred": ranked[:, 0], "true": torch.as_tensor(labels, dtype=torch.long)}
    if logits.shape[1] > 1:
        target_sets["runner_up"] = ranked[:, 1]
    arrays = {
        "inputs": inputs.numpy(),
        "labels": np.asarray(labels, np.int64),
        "indices": np.asarray(indices, np.int64),
        "layer": np.asarray(layer),
        "probabilities": probabilities.numpy(),
    }
    maps, flags = {}, {}
    for kind, targets in target_sets.items():
        result = grad_cam(model, inputs, [layer], targets=targets, method=method)
        maps[kind], flags[kind] = result.maps[layer].numpy(), result.flags[layer].numpy()
        arrays |= {
            f"targets_{kind}": targets.numpy(),
            f"cam_{kind}": maps[kind].astype(np.float32),
            f"flags_{kind}": flags[kind].astype(bool),
        }

    kinds = {"pred": "pred", "true": "true", "runner_up": "runner-up"}
    fig, axes = drawing.grid(
        len(images),
        1 + len(target_sets),
        f"{drawing.model_label(config)}: {METHOD_NAMES[method]} at {layer} for the predicted, true and runner-up class",
        title_lines=2,
    )
    for row, image in enumerate(images):
        axes[row, 0].imshow(image)
        drawing.clear_axes(axes[row, 0])
        axes[row, 0].set_title(names[row], fontsize=drawing.SMALL)
        for col, (kind, targets) in enumerate(target_sets.items(), start=1):
            target = int(targets[row])
            drawing.draw_cam(axes[row, col], image, maps[kind][row], bool(flags[kind][row]), cmap, alpha)
            axes[row, col].set_title(
                f"{kinds[kind]}: {classes[target]}\n{drawing.prob(probabilities[row, target])}", fontsize=drawing.SMALL
            )
    drawing.cam_colorbar(fig, axes[:, 1:], cmap)
    return [
        write_npz_atomic(out_dir / "gradcam_classes.npz", **arrays),
        drawing.save_figure(fig, out_dir / "gradcam_classes.png"),
    ]


def render(inputs: Mapping[str, str], out_dir: Path, settings: dict) -> list[Path]:
    """The family's entry point (see ``convscope.figures``)."""
    return render_gradcam(
        inputs["checkpoint"], inputs["index"], out_dir, predictions_path=inputs["predictions"], **settings
    )
