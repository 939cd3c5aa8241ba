"""The explanation-quality figures: is the CAM on the object, does it find what the score needs, does it survive
the destruction of the weights? They draw what the explain job measured (:mod:`convscope.explanations`),
``results/{model}/explanations.json`` and ``figures/{model}/explanations/explanations.npz``, and nothing else:
the job imports no torch.

``render`` writes ``localisation.png``, ``deletion_insertion.png``, ``sanity_curves.png`` and ``sanity_maps.png``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from convscope.contracts import LOCALISATION_GROUPS
from convscope.figures import drawing
from convscope.io import read_artifact
from convscope.methods import METHOD_NAMES

BASELINE_STYLES = {"centre": ("black", "--"), "random": ("0.45", ":")}
MAX_STEP_COLUMNS = 8  # randomisation steps shown in sanity_maps.png (evenly spaced, always the last)


def _note_figure(label: str, text: str) -> Figure:
    fig = Figure(figsize=(6, 2), layout="constrained")
    fig.text(0.5, 0.5, f"{label}: {text}", ha="center", va="center", fontsize=11, wrap=True)
    return fig


def _titled(fig: Figure, label: str, report: dict, question: str, detail: str = "") -> Figure:
    """A curves figure's title: the model, what it asks of the maps, and the test images it averages over."""
    fig.suptitle(
        f"{label}: do the {report['layer']} maps {question}? {report['num_images']} test images{detail}",
        fontsize=10,
    )
    return fig


def _localisation_figure(label: str, report: dict, methods: list[str]) -> Figure:
    layers = report["layers"]
    fig = Figure(figsize=(max(7.0, 1.6 + 0.45 * len(layers) * (len(methods) + 1)), 6.0), layout="constrained")
    axes = fig.subplots(2, 2, squeeze=False)
    x = np.arange(len(layers))
    width = 0.8 / len(methods)
    first = report["methods"][methods[0]]["localisation"][layers[0]]["baselines"]
    metrics = {
        "pointing_game": "pointing game: share of maps\nwhose maximum is on the object",
        "energy": "energy pointing game: share\nof the map's mass on the object",
    }
    for row, (metric, ylabel) in enumerate(metrics.items()):
        for col, group in enumerate(LOCALISATION_GROUPS[1:]):
            ax = axes[row, col]
            images = first["random"][group]["n"]
            flagged = 0
            for k, method in enumerate(methods):
                entries = [report["methods"][method]["localisation"][layer][group] for layer in layers]
                values = [np.nan if e[metric] is None else e[metric] for e in entries]
                flagged += sum(e["flagged"] for e in entries)
                ax.bar(
                    x + (k - (len(methods) - 1) / 2) * width, values, width, color=f"C{k}", label=METHOD_NAMES[method]
                )
            for who, (colour, style) in BASELINE_STYLES.items():
                value = first[who][group][metric]
                if value is not None:
                    ax.axhline(value, color=colour, linestyle=style, linewidth=1.3, label=f"{who} baseline")
            if not images:
                ax.text(0.5, 0.5, f"no {group} test images", transform=ax.transAxes, ha="center", va="center")
            left_out = f"\n{flagged} undefined maps left out (all methods and layers)" if flagged else ""
            ax.set_title(f"{group} predictions: {images} test images{left_out}", fontsize=9)
            ax.set_xticks(x, layers, fontsize=drawing.SMALL)
            ax.set_xlabel("layer", fontsize=drawing.SMALL)
            ax.set_ylim(0, 1.05)
            ax.tick_params(axis="y", labelsize=drawing.SMALL)
            if col == 0:
                ax.set_ylabel(ylabel, fontsize=drawing.SMALL)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=drawing.SMALL)
    fig.suptitle(
        f"{label}: is the CAM on the object? Test "
        f"split, pointing tolerance {report['tolerance_px']:.1f} px\n"
        "centre baseline: Gaussian at the image centre; random baseline: uniform noise",
        fontsize=10,
    )
    return fig


def _curves_figure(label: str, report: dict, arrays: Mapping[str, np.ndarray]) -> Figure:
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    fractions = arrays["fractions"]
    methods = list(report["methods"])
    aucs = report["methods"][methods[0]]["faithfulness"]  # random-map AUCs are the same for every method
    kinds = {
        "deletion": ("deleted (set to the dataset mean)", "lower AUC is better"),
        "insertion": ("restored into the blurred image", "higher AUC is better"),
    }
    for ax, (kind, (action, better)) in zip(axes, kinds.items()):
        for k, method in enumerate(methods):
            auc = report["methods"][method]["faithfulness"][f"{kind}_auc"]
            mean = arrays[f"{kind}_{method}"][~arrays[f"undefined_{method}"]].mean(0)
            ax.plot(fractions, mean, color=f"C{k}", label=f"{METHOD_NAMES[method]} (AUC {auc})")
        ax.plot(
            fractions,
            arrays[f"random_{kind}"].mean(0),
            color="0.45",
            linestyle="--",
            label=f"random map (AUC {aucs[f'random_{kind}_auc']})",
        )
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(f"share of pixels {action}, most salient first", fontsize=drawing.SMALL)
        ax.set_ylabel("softmax probability of the explained class (mean)", fontsize=drawing.SMALL)
        ax.set_title(f"{kind}: {better}", fontsize=9)
        ax.tick_params(labelsize=drawing.SMALL)
        ax.legend(fontsize=drawing.SMALL)
    return _titled(fig, label, report, "find what the score needs", f", {report['steps']} steps")


def _sanity_curves_figure(label: str, report: dict) -> Figure:
    names = report["methods"][next(iter(report["methods"]))]["sanity"]["steps"]
    fig = Figure(figsize=(max(9.0, 4 + 0.5 * len(names)), 4.4), layout="constrained")
    axes = fig.subplots(1, 2)
    x = np.arange(len(names) + 1)
    ticks = ["trained"] + [f"+{name}" for name in names]
    for k, (method, entry) in enumerate(report["methods"].items()):
        sanity = entry["sanity"]
        verdict = {True: "passes", False: "fails", None: "undefined"}[sanity["passes"]]
        # Step 0 compares the trained model's maps with themselves: 1 by definition, drawn as the starting point.
        for ax, values, legend in (
            (axes[0], sanity["spearman"], f"{METHOD_NAMES[method]}: {verdict}"),
            (axes[1], sanity["ssim"], METHOD_NAMES[method]),
        ):
            values = [np.nan if v is None else v for v in values]
            ax.plot(x, [1.0, *values], marker="o", markersize=3, color=f"C{k}", label=legend)
    threshold = report["sanity_threshold"]
    axes[0].axhline(
        threshold, color="0.45", linestyle="--", linewidth=1, label=f"pass: below {threshold} when all are random"
    )
    for ax, what in zip(axes, ("Spearman rank correlation", "SSIM")):
        ax.set_xticks(x, ticks, rotation=45, ha="right", fontsize=drawing.SMALL)
        ax.set_xlabel("stages re-initialised (cumulative, head first)", fontsize=drawing.SMALL)
        ax.set_ylabel(f"{what} with the trained model's map (mean)", fontsize=drawing.SMALL)
        ax.set_ylim(top=1.05)
        ax.tick_params(axis="y", labelsize=drawing.SMALL)
        ax.legend(fontsize=drawing.SMALL)
    return _titled(fig, label, report, "change as the weights are destroyed")


def _sanity_maps_figure(
    label: str,
    report: dict,
    arrays: Mapping[str, np.ndarray],
    images: np.ndarray,
    names: list[str],
    picked: list[int],
    cmap: str,
    alpha: float,
) -> Figure:
    methods = list(report["methods"])
    steps = arrays["sanity_steps"].tolist()
    fig, axes = drawing.grid(
        len(images) * len(methods),
        2 + len(picked),
        f"{label}: {report['layer']} maps as the stages are re-initialised, head first",
        label_inches=1.2,
        title_lines=2,
    )
    for e, image in enumerate(images):
        for k, method in enumerate(methods):
            row = e * len(methods) + k
            axes[row, 0].imshow(image)
            drawing.clear_axes(axes[row, 0])
            axes[row, 0].set_ylabel(
                f"{names[e]}\n{METHOD_NAMES[method]}", rotation=0, ha="right", va="center", fontsize=drawing.SMALL
            )
            undefined = bool(arrays[f"undefined_{method}"][e])
            drawing.draw_cam(axes[row, 1], image, arrays[f"cam_{method}"][e], undefined, cmap, alpha)
            for col, step in enumerate(picked, start=2):
                randomised = arrays[f"sanity_maps_{method}"][step, e]
                undefined = bool(arrays[f"sanity_undefined_{method}"][step, e])
                drawing.draw_cam(axes[row, col], image, randomised, undefined, cmap, alpha)
                rho = arrays[f"sanity_spearman_{method}"][step, e]
                similarity = arrays[f"sanity_ssim_{method}"][step, e]
                header = f"+{steps[step]} ({step + 1}/{len(steps)})\n" if row == 0 else ""
                axes[row, col].set_title(f"{header}ρ={rho:.2f} SSIM={similarity:.2f}", fontsize=drawing.SMALL)
    drawing.title_cam_grid(fig, axes, ["trained"], cmap, fontsize=drawing.SMALL)
    return fig


def render_explanations(
    report_path: str | Path,
    arrays_dir: str | Path,
    out_dir: str | Path,
    *,
    cmap: str = "jet",
    alpha: float = 0.45,
) -> list[Path]:
    """Draws what the explain job measured for one model; ``cmap`` and ``alpha`` style the heatmaps.

    Args:
        report_path: Its ``explanations.json``.
        arrays_dir: The folder of its ``explanations.npz``.
        out_dir: Folder for the figures (created).

    Returns:
        Paths of ``localisation.png``, ``deletion_insertion.png``, ``sanity_curves.png`` and ``sanity_maps.png``.
    """
    drawing.check_heatmap_options("gradcam", cmap, alpha)
    report = read_artifact(report_path, "explain")
    arrays = read_artifact(Path(arrays_dir) / "explanations.npz", "explain")
    label, out_dir = drawing.name_label(report["model"], report["arch"]), Path(out_dir)
    methods = list(report["methods"])
    skipped = report["methods"][methods[0]]["localisation_skipped"]
    if skipped is None:
        localisation = _localisation_figure(label, report, methods)
    else:
        localisation = _note_figure(label, f"localisation skipped: {skipped}")
    paths = [drawing.save_figure(localisation, out_dir / "localisation.png")]
    paths.append(drawing.save_figure(_curves_figure(label, report, arrays), out_dir / "deletion_insertion.png"))
    paths.append(drawing.save_figure(_sanity_curves_figure(label, report), out_dir / "sanity_curves.png"))
    count = len(arrays["sanity_steps"])
    picked = np.unique(np.linspace(0, count - 1, min(count, MAX_STEP_COLUMNS)).round().astype(int)).tolist()
    images, sample = arrays["example_images"], arrays["sample_indices"]
    names = [f"test image {sample[e]}\n{name}" for e, name in enumerate(arrays["example_classes"])]
    maps = _sanity_maps_figure(label, report, arrays, images, names, picked, cmap, alpha)
    paths.append(drawing.save_figure(maps, out_dir / "sanity_maps.png"))
    return paths


def render(inputs: Mapping[str, str], out_dir: Path, settings: dict) -> list[Path]:
    """The family's entry point (see ``convscope.figures``)."""
    return render_explanations(inputs["explanations"], inputs["explanation_arrays"], out_dir, **settings)
