"""Failure cases: the most confident misclassifications with Grad-CAM for both classes, and how much of the
CAM lies on the object (inside its ground-truth mask) for correct and wrong predictions.

``render_failures`` writes ``failures.png``, ``failures.npz``, ``failures.json`` and, when the dataset has object
masks, ``failure_energy.png``. The energy share of a map is ``sum(cam * mask) / sum(cam)``: 1 means all of
the map lies on the object, a low share means the model looked at the background. ``mask_area`` in the JSON is
the mask's mean share of the image per group: what a map spread evenly would score, the baseline to compare with.

``failures.npz`` holds, per failure row: ``inputs`` (model inputs), ``indices``, ``labels``, ``preds``, ``cam_pred``/
``cam_true`` and ``flags_pred``/``flags_true`` (maps at ``layer``), and with masks ``masks`` (at input geometry),
``energy_pred``/``energy_true``; and per test image ``test_energy_in_mask`` (NaN for an all-zero map),
``test_correct`` and ``test_mask_area``, the numbers behind ``failure_energy.png``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from convscope.cam import grad_cam
from convscope.config import ModelConfig
from convscope.contracts import Failure, Failures
from convscope.data import read_index, shapes
from convscope.errors import ArtifactError, ConfigError
from convscope.evaluation import open_model_and_split, read_test_predictions
from convscope.explain import energy_in_mask, summary, test_energies
from convscope.figures import drawing
from convscope.io import write_json_atomic, write_npz_atomic
from convscope.methods import METHOD_NAMES
from convscope.models import default_cam_layers, find_layers
from convscope.transforms import display_images, eval_mask

BATCH_SIZE = 64
# predictions.csv stores confidences with 6 decimals; a larger gap means it came from another checkpoint.
CONFIDENCE_TOLERANCE = 1e-3


def _textures(index_path: Path) -> list[str] | None:
    """Background texture name per test image, for the shapes dataset; None for other datasets."""
    index = read_index(index_path)
    if index.kind != "shapes":
        return None
    rows = shapes.load_arrays(index_path.parent)["textures"][np.asarray(index.refs["test"], dtype=np.int64)]
    return [shapes.TEXTURES[int(t)] for t in rows]


def _contour(ax: Axes, mask: np.ndarray | None) -> None:
    if mask is not None and mask.any() and not mask.all():
        ax.contour(mask.astype(float), levels=[0.5], colors="white", linewidths=0.9)


def _as_float(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _failures_figure(
    config: ModelConfig,
    rows: pd.DataFrame,
    images: np.ndarray,
    arrays: dict[str, np.ndarray],
    probabilities: torch.Tensor,
    energies: dict[str, np.ndarray],
    textures: list[str] | None,
    classes: list[str],
    layer: str,
    method: str,
    cmap: str,
    alpha: float,
) -> Figure:
    fig, axes = drawing.grid(
        len(rows),
        3,
        f"{drawing.model_label(config)}: most confident test misclassifications\n{METHOD_NAMES[method]} at {layer}",
        title_lines=2,
    )
    for row, record in enumerate(rows.to_dict("records")):
        mask = arrays["masks"][row] if "masks" in arrays else None
        axes[row, 0].imshow(images[row])
        drawing.clear_axes(axes[row, 0])
        _contour(axes[row, 0], mask)
        on = f" on {textures[record['index']]}" if textures else ""
        axes[row, 0].set_title(f"test image {record['index']}{on}", fontsize=drawing.SMALL)
        for col, kind in enumerate(("pred", "true"), start=1):
            target = int(record["pred" if kind == "pred" else "label"])
            drawing.draw_cam(
                axes[row, col], images[row], arrays[f"cam_{kind}"][row], bool(arrays[f"flags_{kind}"][row]), cmap, alpha
            )
            _contour(axes[row, col], mask)
            share = energies[kind][row] if energies else math.nan
            inside = f", {share:.0%} in mask" if math.isfinite(share) else ""
            axes[row, col].set_title(
                f"{kind}: {classes[target]}\n{drawing.prob(probabilities[row, target])}{inside}", fontsize=drawing.SMALL
            )
    drawing.cam_colorbar(fig, axes[:, 1:], cmap)
    return fig


def _energy_figure(
    config: ModelConfig,
    energies: np.ndarray,
    correct: np.ndarray,
    areas: np.ndarray,
    stats: dict,
    layer: str,
    method: str,
) -> Figure:
    fig = Figure(figsize=(6.4, 3.8), layout="constrained")
    ax = fig.subplots()
    bins = np.linspace(0, 1, 21)
    for key, group, colour in (("correct", correct, "tab:blue"), ("misclassified", ~correct, "tab:red")):
        values = energies[group & np.isfinite(energies)]
        mean = stats[key]["mean"]
        if mean is None:
            continue
        std = stats[key]["std"] or 0.0
        # Large objects score high even for a map spread evenly, so the mask's own share is the baseline to beat.
        label = f"{key} (n={len(values)}): mean {mean:.2f} ± {std:.2f}; mask covers {areas[group].mean():.2f}"
        ax.hist(values, bins=bins, density=True, alpha=0.45, color=colour, label=label)
        ax.axvline(mean, color=colour, linestyle="--", linewidth=1.5)
    if not any(stats[key]["n"] for key in stats):
        ax.text(0.5, 0.5, "no non-constant maps to measure", transform=ax.transAxes, ha="center", va="center")
    else:
        ax.set_ylim(top=ax.get_ylim()[1] * 1.3)  # headroom, so the legend does not cover the bars
        ax.legend(
            loc="upper right",
            fontsize=drawing.SMALL,
            title="dashed: group mean; mask covers: its mean share of the image",
            title_fontsize=drawing.SMALL,
        )
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of Grad-CAM energy inside the object mask")
    ax.set_ylabel("density")
    ax.set_title(
        f"{drawing.model_label(config)}: where the predicted class's {METHOD_NAMES[method]} lies ({layer})", fontsize=10
    )
    return fig


def render_failures(
    checkpoint_path: str | Path,
    index_path: str | Path,
    predictions_path: str | Path,
    out_dir: str | Path,
    k: int = 6,
    layer: str | None = None,
    method: str = "gradcam",
    cmap: str = "jet",
    alpha: float = 0.45,
) -> list[Path]:
    """The ``k`` most confident test misclassifications with Grad-CAM for the predicted and the true class.

    Failures come from ``predictions.csv`` (confidence descending, ties by index). When the dataset has object
    masks, the share of CAM energy inside the mask is computed for every test image (predicted class) and
    summarised for correct and misclassified predictions.

    Args:
        checkpoint_path: A convscope checkpoint.
        index_path: The dataset's ``index.json``.
        predictions_path: The model's ``predictions.csv`` from evaluate.
        out_dir: Folder for the outputs (created).
        k: How many failures to show.
        layer: Module name; None uses the deepest of :func:`~convscope.figures.gradcam.default_cam_layers`.
        method: "gradcam", "gradcam++" or "layercam".
        cmap: Matplotlib colour map of the heatmaps.
        alpha: Opacity of the heatmap over the image.

    Returns:
        Paths of ``failures.png``, ``failures.npz``, ``failures.json`` and, with masks, ``failure_energy.png``.
    """
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    drawing.check_heatmap_options(method, cmap, alpha)
    index_path, out_dir = Path(index_path), Path(out_dir)
    config, model, source = open_model_and_split(checkpoint_path, index_path, "test")
    layer = layer if layer is not None else default_cam_layers(model, config.arch)[-1]
    find_layers(model, [layer])  # an unknown layer fails here, before any work
    test = read_test_predictions(predictions_path, source)
    textures = _textures(index_path)
    has_masks = len(source) > 0 and source.mask(0) is not None

    wrong = test[test["pred"] != test["label"]]
    rows = wrong.sort_values(["confidence", "index"], ascending=[False, True], kind="stable").head(k)
    indices = rows["index"].tolist()
    size = config.input_size
    no_maps = np.zeros((0, size, size), np.float32)  # keeps every key present when nothing was misclassified
    arrays = {
        "inputs": np.zeros((0, 3, size, size), np.float32),
        "indices": np.asarray(indices, np.int64),
        "labels": rows["label"].to_numpy(np.int64),
        "preds": rows["pred"].to_numpy(np.int64),
        "layer": np.asarray(layer),
        "cam_pred": no_maps,
        "flags_pred": np.zeros(0, bool),
        "cam_true": no_maps,
        "flags_true": np.zeros(0, bool),
    }
    if has_masks:
        arrays |= {
            "masks": no_maps.astype(bool),
            "energy_pred": np.zeros(0, np.float32),
            "energy_true": np.zeros(0, np.float32),
        }
    energies: dict[str, np.ndarray] = {}
    if indices:
        inputs = torch.stack([source[i][0] for i in indices])
        masks = torch.stack([eval_mask(source.mask(i), config) for i in indices]) if has_masks else None
        arrays |= {"inputs": inputs.numpy()} | ({"masks": masks.numpy().astype(bool)} if has_masks else {})
        for kind, column in (("pred", "pred"), ("true", "label")):
            result = grad_cam(model, inputs, [layer], targets=rows[column].tolist(), method=method)
            arrays |= {f"cam_{kind}": result.maps[layer].numpy(), f"flags_{kind}": result.flags[layer].numpy()}
            if has_masks:
                energies[kind] = arrays[f"energy_{kind}"] = energy_in_mask(result.maps[layer], masks).numpy()
        probabilities = result.logits.softmax(1)
        stale = (
            probabilities[torch.arange(len(indices)), rows["pred"].tolist()] - torch.tensor(rows["confidence"].tolist())
        ).abs()
        if stale.max() > CONFIDENCE_TOLERANCE:
            raise ArtifactError(
                f"predictions file {str(predictions_path)!r} does not match checkpoint "
                f"{str(checkpoint_path)!r} (test #{indices[int(stale.argmax())]} "
                "differs); rerun evaluate"
            )
        fig = _failures_figure(
            config,
            rows,
            display_images(inputs, config),
            arrays,
            probabilities,
            energies,
            textures,
            source.classes,
            layer,
            method,
            cmap,
            alpha,
        )
    else:
        fig = Figure(figsize=(5, 2), layout="constrained")
        fig.text(
            0.5,
            0.5,
            f"{drawing.model_label(config)}: no misclassified test images",
            ha="center",
            va="center",
            fontsize=11,
        )

    records: list[Failure] = []
    for row, record in enumerate(rows.to_dict("records")):
        i, label, pred = int(record["index"]), int(record["label"]), int(record["pred"])
        entry = {
            "index": i,
            "label": label,
            "label_name": source.classes[label],
            "pred": pred,
            "pred_name": source.classes[pred],
            "confidence": float(record["confidence"]),
        }
        if textures:
            entry["texture"] = textures[i]
        entry["energy_in_mask_pred"] = _as_float(energies["pred"][row]) if energies else None
        entry["energy_in_mask_true"] = _as_float(energies["true"][row]) if energies else None
        records.append(entry)
    paths = [drawing.save_figure(fig, out_dir / "failures.png")]

    stats = mask_area = None
    if has_masks:
        values, correct, areas = test_energies(model, source, config, layer, method, BATCH_SIZE)
        arrays |= {"test_energy_in_mask": values, "test_correct": correct, "test_mask_area": areas}
        stats = {"correct": summary(values[correct]), "misclassified": summary(values[~correct])}
        mask_area = {"correct": summary(areas[correct])["mean"], "misclassified": summary(areas[~correct])["mean"]}
        energy_figure = drawing.save_figure(
            _energy_figure(config, values, correct, areas, stats, layer, method), out_dir / "failure_energy.png"
        )
    paths.append(write_npz_atomic(out_dir / "failures.npz", **arrays))
    summary_json: Failures = {
        "k": k,
        "layer": layer,
        "failures": records,
        "energy_in_mask": stats,
        "mask_area": mask_area,
    }
    paths.append(write_json_atomic(out_dir / "failures.json", summary_json))
    return paths + ([energy_figure] if has_masks else [])


def render(inputs: Mapping[str, str], out_dir: Path, settings: dict) -> list[Path]:
    """The family's entry point (see ``convscope.figures``)."""
    return render_failures(inputs["checkpoint"], inputs["index"], inputs["predictions"], out_dir, **settings)
