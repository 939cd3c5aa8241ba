"""The cross-model figure: the same test images, each model's map side by side. The numbers come from
:mod:`convscope.agreement`.

``render_agreement`` writes ``results/comparison/agreement.json`` (its shape is in ``convscope.agreement``) and,
into ``out_dir``, ``agreement.png`` (rows: images, the input first; columns: models) and ``agreement.npz``
(``models``, ``inputs``, ``sample_indices``, ``labels``, per model ``cam_<model>`` at the common size and
``predictions_<model>``). When the comparison is skipped, ``agreement.png`` says why.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from convscope.agreement import Found, compute_agreement
from convscope.explain import undefined_maps
from convscope.figures import drawing
from convscope.io import write_json_atomic, write_npz_atomic
from convscope.methods import METHOD_NAMES
from convscope.transforms import display_images


def _note_figure(text: str) -> Figure:
    fig = Figure(figsize=(6, 2), layout="constrained")
    fig.text(0.5, 0.5, f"Models not compared: {text}", ha="center", va="center", fontsize=10, wrap=True)
    return fig


def _score(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _row_agreement(report: dict, row: int) -> str:
    """The image's agreement, averaged over the pairs of models where both maps are defined."""
    rho = [p["spearman"][row] for p in report["pairs"] if p["spearman"][row] is not None]
    pointing = [p["pointing"][row] for p in report["pairs"] if p["pointing"][row] is not None]
    mean = lambda values: sum(values) / len(values) if values else None  # noqa: E731
    return f"Spearman {_score(mean(rho))}\npointing {_score(mean(pointing))}"


def _agreement_figure(found: Found, cmap: str, alpha: float) -> Figure:
    report, classes = found.report, found.classes
    names = list(found.maps)
    images = display_images(found.inputs, found.display)
    method = METHOD_NAMES.get(report["method"], report["method"])
    title = (
        f"{method} of each model at its deepest layer, same test images ({report['size']} px)\n"
        f"mean Spearman {_score(report['mean_spearman'])}, pointing agreement {_score(report['pointing_agreement'])}"
        + ("; rows: mean over the pairs of models" if len(names) > 2 else "")
    )
    fig, axes = drawing.grid(len(images), 1 + len(names), title, label_inches=1.3, title_lines=2)
    for row, (image, label) in enumerate(zip(images, report["labels"])):
        axes[row, 0].imshow(image)
        drawing.clear_axes(axes[row, 0])
        axes[row, 0].set_ylabel(
            f"test image {report['sample_indices'][row]}\ntrue: {classes[label]}\n{_row_agreement(report, row)}",
            rotation=0,
            ha="right",
            va="center",
            fontsize=drawing.SMALL,
        )
        for col, name in enumerate(names, start=1):
            cam = found.maps[name][row : row + 1]
            undefined = bool(undefined_maps(cam)[0])
            drawing.draw_cam(axes[row, col], image, cam[0].numpy(), undefined, cmap, alpha)
            predicted = report["predictions"][name][row]
            # Below the panel, so that the column headers above the first row stay black.
            axes[row, col].set_xlabel(
                f"pred: {classes[predicted]} {drawing.prob(found.probabilities[name][row, predicted])}",
                fontsize=drawing.SMALL,
                color="black" if predicted == label else "firebrick",
            )
    drawing.title_cam_grid(fig, axes, [f"{name}\nat {report['layers'][name]}" for name in names], cmap)
    return fig


def render_agreement(
    checkpoints: Mapping[str, str | Path],
    index_path: str | Path,
    out_dir: str | Path,
    json_path: str | Path,
    *,
    cmap: str = "jet",
    alpha: float = 0.45,
    **settings: Any,
) -> list[Path]:
    """Compares the models' maps with ``settings`` (the keyword arguments of
    :func:`~convscope.agreement.compute_agreement`) and draws them; ``cmap`` and ``alpha`` style the heatmaps.

    Returns:
        Paths of the JSON, ``agreement.png`` and ``agreement.npz``.
    """
    drawing.check_heatmap_options(settings.get("method", "gradcam"), cmap, alpha)
    found = compute_agreement(checkpoints, index_path, **settings)
    out_dir = Path(out_dir)
    paths = [write_json_atomic(json_path, found.report)]
    if found.report["skipped"] is not None:
        fig = _note_figure(found.report["skipped"])
    else:
        fig = _agreement_figure(found, cmap, alpha)
    paths.append(drawing.save_figure(fig, out_dir / "agreement.png"))
    paths.append(write_npz_atomic(out_dir / "agreement.npz", **found.arrays))
    print(f"compare: {found.report['skipped'] or 'mean Spearman ' + _score(found.report['mean_spearman'])}")
    return paths
