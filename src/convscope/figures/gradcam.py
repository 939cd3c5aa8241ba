"""Grad-CAM figures: maps at several depths for sample test images, and maps for competing classes.

``render_gradcam`` writes ``gradcam.npz`` (the arrays behind the figure, contract below), ``gradcam_layers.png``,
``gradcam_classes.png`` and ``gradcam_classes.npz``. ``gradcam.npz`` holds exactly: ``inputs`` (the float32
N×C×H×W tensors fed to the model), ``targets`` (explained class, int64), ``labels`` (true class, int64),
``layers`` (module names, str) and per layer ``cam_<layer>`` (N×H×W float32 in [0, 1], the engine's maps) and
``flags_<layer>`` (bool N, True where the map is blank or non-finite).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from torch import nn

from convscope.errors import ArtifactError, ConfigError, DatasetError, LayerError
from convscope.cam import METHODS, ActivationRecorder, CamResult, grad_cam
from convscope.config import ModelConfig
from convscope.data import ImageSource, open_split
from convscope.figures import SMALL, load_model, model_label, sample_indices, save_arrays, save_figure
from convscope.transforms import build_transform, denormalise

INCEPTION_LAYERS = ("Mixed_5d", "Mixed_6e", "Mixed_7c")
PREDICTION_COLUMNS = ("split", "index", "label", "pred", "confidence")
FEATURE_FAMILIES = ("mobilenet", "efficientnet", "vgg", "densenet")
CAM_LABEL = "Grad-CAM, normalised per map"
METHOD_NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "layercam": "LayerCAM"}
PANEL_INCHES = 1.55


def _has_conv(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


def default_cam_layers(model: nn.Module, arch: str) -> list[str]:
    """Layers worth explaining for an architecture, shallowest first (the last is the deepest).

    ResNets: ``layer1``..``layer4``; Inception v3: ``Mixed_5d``, ``Mixed_6e``, ``Mixed_7c``; MobileNet,
    EfficientNet, VGG and DenseNet: up to four evenly spaced children of ``features``, ending with its last
    child; anything else: the last top-level child that contains a Conv2d.
    """
    modules = dict(model.named_modules())
    resnet_stages = [f"layer{i}" for i in range(1, 5)]
    if all(name in modules for name in resnet_stages):
        return resnet_stages
    if arch == "inception_v3" and all(name in modules for name in INCEPTION_LAYERS):
        return list(INCEPTION_LAYERS)
    features = getattr(model, "features", None)
    if arch.startswith(FEATURE_FAMILIES) and isinstance(features, nn.Module) and len(features) > 0:
        children = list(features.named_children())
        # ReLU/pool/norm children between convs would waste a column, except the last: it is the output.
        candidates = [name for name, child in children[:-1] if _has_conv(child)] + [children[-1][0]]
        count = min(4, len(candidates))
        return [f"features.{candidates[len(candidates) * (i + 1) // count - 1]}" for i in range(count)]
    convs = [name for name, child in model.named_children() if _has_conv(child)]
    if not convs:
        raise LayerError(f"{type(model).__name__} ({arch}) has no Conv2d layer to explain; pass layers explicitly")
    return convs[-1:]


def open_model_and_split(checkpoint_path: str | Path, index_path: str | Path, split: str) -> tuple[ModelConfig, nn.Module, ImageSource]:
    """The checkpoint's config and model (eval mode, CPU) and one split read with its evaluation transform."""
    checkpoint, config, model = load_model(checkpoint_path)
    source = open_split(index_path, split, build_transform(config, train=False))
    if source.classes != checkpoint["classes"]:
        raise ArtifactError(f"checkpoint {str(checkpoint_path)!r} was trained on classes {checkpoint['classes']} but {str(index_path)!r} has {source.classes}; use the matching dataset")
    return config, model, source


def read_test_predictions(predictions_path: str | Path, source: ImageSource) -> pd.DataFrame:
    """The test rows of ``predictions.csv`` in index order, checked against the test split."""
    predictions = pd.read_csv(predictions_path)
    missing = [c for c in PREDICTION_COLUMNS if c not in predictions.columns]
    if missing:
        raise ArtifactError(f"predictions file {str(predictions_path)!r} lacks columns {missing}; write it with convscope evaluate")
    test = predictions[predictions["split"] == "test"].sort_values("index").reset_index(drop=True)
    if test["index"].tolist() != list(range(len(source))) or test["label"].tolist() != source.labels:
        raise ArtifactError(f"predictions file {str(predictions_path)!r} does not match the test split ({len(test)} rows for {len(source)} images); rerun evaluate")
    return test


def check_options(method: str, cmap: str, alpha: float) -> None:
    """Raises ValueError for an unknown CAM method or colour map, or an alpha outside [0, 1]."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    if cmap not in matplotlib.colormaps:
        raise ConfigError(f"unknown colour map {cmap!r}; use a matplotlib colormap name such as 'jet' or 'inferno'")
    if not 0 <= alpha <= 1:
        raise ConfigError(f"alpha must lie in [0, 1], got {alpha}")


def display_images(inputs: torch.Tensor, config: ModelConfig) -> np.ndarray:
    """Model inputs as N×H×W×3 float images in [0, 1] for imshow."""
    return denormalise(inputs, config).permute(0, 2, 3, 1).numpy()


def draw_cam(ax: Axes, image: np.ndarray, cam: np.ndarray, flagged: bool, cmap: str, alpha: float) -> None:
    """The heatmap over the image; a grey "blank map" panel where the engine flagged the map."""
    if flagged:
        ax.imshow(np.full(cam.shape, 0.75), cmap="gray", vmin=0, vmax=1)
        ax.text(0.5, 0.5, "blank map", transform=ax.transAxes, ha="center", va="center", fontsize=SMALL, color="0.2")
    else:
        ax.imshow(image)
        ax.imshow(cam, cmap=cmap, vmin=0, vmax=1, alpha=alpha)
    clear_axes(ax)


def prob(value: float) -> str:
    """A probability for a title: two decimals, or one significant digit below 0.01 (not a bare 0.00)."""
    value = float(value)
    return f"p={value:.2f}" if value >= 0.01 else f"p={value:.1g}"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def clear_axes(ax: Axes) -> None:
    """No ticks or frame, but the y label stays (``axis("off")`` would hide the row labels)."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def cam_colorbar(fig: Figure, axes: np.ndarray, cmap: str) -> None:
    """One colour bar for every heatmap of the figure (all maps share the [0, 1] scale)."""
    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), cmap), ax=list(np.ravel(axes)), shrink=min(0.6, 3 / axes.shape[0]), aspect=25, pad=0.02)
    # A one-row figure's bar is shorter than the label: two lines keep it inside the figure.
    bar.set_label(CAM_LABEL if axes.shape[0] > 1 else CAM_LABEL.replace(", ", ",\n"), fontsize=SMALL)
    bar.ax.tick_params(labelsize=SMALL)


def grid(rows: int, cols: int, title: str, label_inches: float = 0.0, title_lines: int = 0) -> tuple[Figure, np.ndarray]:
    """A figure of rows×cols image panels (2-D axes array) with a title, room for a colour bar, row labels
    (``label_inches`` wide) and ``title_lines`` lines of panel title above every row."""
    # "compressed" is constrained layout that also closes the gaps square images leave between columns; it
    # shrinks the panels when the titles do not fit, and cuts the last row when they still do not, so the
    # height must budget for them.
    height = rows * (PANEL_INCHES + 0.17 * title_lines) + 0.7
    fig = Figure(figsize=(PANEL_INCHES * cols + 1.0 + label_inches, height), layout="compressed")
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
    fig.suptitle(title, fontsize=10)
    return fig, axes


def _layers_figure(config: ModelConfig, images: np.ndarray, result: CamResult, labels: list[int], classes: list[str], names: list[str], method: str, cmap: str, alpha: float) -> Figure:
    layers = list(result.maps)
    probabilities = result.logits.softmax(1)
    blank = result.flag_count()
    title = f"{model_label(config)}: {METHOD_NAMES[method]} for the predicted class, per layer" + (f" ({_plural(blank, 'blank map')})" if blank else "")
    fig, axes = grid(len(images), 1 + len(layers), title, label_inches=1.2)
    for row, (image, label, target) in enumerate(zip(images, labels, result.targets.tolist())):
        axes[row, 0].imshow(image)
        clear_axes(axes[row, 0])
        colour = "black" if label == target else "firebrick"
        axes[row, 0].set_ylabel(f"{names[row]}\ntrue: {classes[label]}\npred: {classes[target]} ({prob(probabilities[row, target])})",
                                rotation=0, ha="right", va="center", fontsize=SMALL, color=colour)
        for col, layer in enumerate(layers, start=1):
            draw_cam(axes[row, col], image, result.maps[layer][row].numpy(), bool(result.flags[layer][row]), cmap, alpha)
    axes[0, 0].set_title("input", fontsize=9)
    for col, layer in enumerate(layers, start=1):
        count = result.flag_count(layer)
        axes[0, col].set_title(layer + (f"\n{_plural(count, 'blank map')}" if count else ""), fontsize=9)
    cam_colorbar(fig, axes[:, 1:], cmap)
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
        method: "gradcam", "gradcam++" or "layercam".
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
    check_options(method, cmap, alpha)
    config, model, source = open_model_and_split(checkpoint_path, index_path, split)
    layers = list(layers) if layers is not None else default_cam_layers(model, config.arch)
    ActivationRecorder(model, layers)  # the engine's check: an unknown layer fails here, before any work
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
            raise ConfigError(f"no test image is classified correctly by {config.name}; set figures.gradcam.correct_only: false")
    indices = [candidates[i] for i in sample_indices([source.labels[i] for i in candidates], num_images)]
    inputs = torch.stack([source[i][0] for i in indices]).float()
    labels = [source.labels[i] for i in indices]
    result = grad_cam(model, inputs, layers, method=method)
    images = display_images(inputs, config)
    arrays = {"inputs": inputs.numpy(), "targets": result.targets.numpy().astype(np.int64),
              "labels": np.asarray(labels, np.int64), "layers": np.asarray(list(result.maps), dtype=str)}
    for layer in result.maps:
        arrays[f"cam_{layer}"] = result.maps[layer].numpy().astype(np.float32)
        arrays[f"flags_{layer}"] = result.flags[layer].numpy().astype(bool)
    paths = [save_arrays(out_dir / "gradcam.npz", **arrays)]
    names = [f"{split} image {i}" for i in indices]  # the index the report and predictions.csv use
    fig = _layers_figure(config, images, result, labels, source.classes, names, method, cmap, alpha)
    paths.append(save_figure(fig, out_dir / "gradcam_layers.png"))
    paths += _render_classes(config, model, inputs, images, labels, source.classes, indices, names, layers[-1], result.logits, out_dir, method, cmap, alpha)
    return paths


def _render_classes(config: ModelConfig, model: nn.Module, inputs: torch.Tensor, images: np.ndarray, labels: list[int], classes: list[str],
                    indices: list[int], names: list[str], layer: str, logits: torch.Tensor, out_dir: Path, method: str, cmap: str, alpha: float) -> list[Path]:
    probabilities = logits.softmax(1)
    ranked = logits.argsort(1, descending=True)
    target_sets = {"pred": ranked[:, 0], "true": torch.as_tensor(labels, dtype=torch.long)}
    if logits.shape[1] > 1:
        target_sets["runner_up"] = ranked[:, 1]
    arrays = {"inputs": inputs.numpy(), "labels": np.asarray(labels, np.int64), "indices": np.asarray(indices, np.int64),
              "layer": np.asarray(layer), "probabilities": probabilities.numpy()}
    maps, flags = {}, {}
    for kind, targets in target_sets.items():
        result = grad_cam(model, inputs, [layer], targets=targets, method=method)
        maps[kind], flags[kind] = result.maps[layer].numpy(), result.flags[layer].numpy()
        arrays |= {f"targets_{kind}": targets.numpy(), f"cam_{kind}": maps[kind].astype(np.float32), f"flags_{kind}": flags[kind].astype(bool)}

    kinds = {"pred": "pred", "true": "true", "runner_up": "runner-up"}
    fig, axes = grid(len(images), 1 + len(target_sets), f"{model_label(config)}: {METHOD_NAMES[method]} at {layer} for the predicted, true and runner-up class", title_lines=2)
    for row, image in enumerate(images):
        axes[row, 0].imshow(image)
        clear_axes(axes[row, 0])
        axes[row, 0].set_title(names[row], fontsize=SMALL)
        for col, (kind, targets) in enumerate(target_sets.items(), start=1):
            target = int(targets[row])
            draw_cam(axes[row, col], image, maps[kind][row], bool(flags[kind][row]), cmap, alpha)
            axes[row, col].set_title(f"{kinds[kind]}: {classes[target]}\n{prob(probabilities[row, target])}", fontsize=SMALL)
    cam_colorbar(fig, axes[:, 1:], cmap)
    return [save_arrays(out_dir / "gradcam_classes.npz", **arrays), save_figure(fig, out_dir / "gradcam_classes.png")]
