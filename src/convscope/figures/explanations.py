"""Explanation quality: numbers that say whether the CAM heatmaps of a model can be trusted (see convscope.explain).

``render_explanations`` writes a JSON summary to ``json_path`` and, into ``out_dir``, ``localisation.png``,
``deletion_insertion.png``, ``sanity_curves.png``, ``sanity_maps.png`` and ``explanations.npz``.

The JSON (``schema_version`` 1; floats rounded to 4 decimals, null where undefined)::

    {"schema_version": 1, "model": str, "arch": str, "input_size": int, "split": "test",
     "layers": [str],           # localisation layers, shallowest first
     "layer": str,              # the deepest: faithfulness and sanity check
     "num_images": int,         # images of the faithfulness/sanity sample (spread over classes)
     "sample_indices": [int],   # their positions in the test split
     "steps": int, "seed": int,
     "tolerance_px": float | null,        # pointing-game tolerance at this input size; null without masks
     "sanity_threshold": float,           # a method passes when its final mean Spearman is below this
     "methods": {<method>: {
        "localisation": {<layer>: {<group>: SUMMARY, ...,
                                   "baselines": {"centre": {<group>: SUMMARY}, "random": {<group>: SUMMARY}}}} | null,
        "localisation_skipped": str | null,   # why localisation is null (the dataset has no object masks)
        "faithfulness": {"deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc": float,
                         "n": int, "flagged": int, "steps": int},
        "sanity": {"steps": [stage randomised at each step, head first, cumulative],
                   "spearman": [mean per step], "ssim": [mean per step], "n": int, "flagged": int,
                   "passes": bool | null}}}}

A group is ``all``, ``correct`` or ``misclassified`` (test images by the model's prediction) and a SUMMARY is
``{"pointing_game": mean, "energy": mean, "n": maps counted, "flagged": undefined maps left out}``. The
localisation runs on every test image; method AUCs average the images whose map is defined (``n``; ``flagged``
left out), the random-map AUCs average every sample image.

``explanations.npz`` holds ``layers``, ``sample_indices``, ``sample_labels``, ``sample_targets``, ``fractions``
(S+1), ``random_deletion``/``random_insertion`` (N×(S+1)), ``sanity_steps``; per method ``cam_<m>`` (N×H×W maps
at the deepest layer), ``undefined_<m>``, ``deletion_<m>``/``insertion_<m>``, ``sanity_spearman_<m>``/
``sanity_ssim_<m>`` (S×N) and ``sanity_maps_<m>`` (S×E×H×W for the E example images of ``sanity_maps.png``);
with masks, per test image, ``test_correct``, ``pointing_<m>_<layer>``/``energy_<m>_<layer>`` (NaN for undefined
maps) and the baselines' ``pointing_centre``/``energy_centre``/``pointing_random``/``energy_random``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn
from tqdm import tqdm

from convscope.errors import ConfigError, DatasetError
from convscope.cam import METHODS, ActivationRecorder, grad_cam
from convscope.config import ModelConfig
from convscope.data import ImageSource, read_index
from convscope.explain import (
    SANITY_THRESHOLD, Curves, Sanity, cascading_randomisation, centre_maps, deletion_insertion, dilate, energy_pointing_game,
    pointing_game, random_maps, tolerance_pixels, undefined_maps,
)
from convscope.figures import SMALL, model_label, sample_indices, save_arrays, save_figure, save_text
from convscope.figures.failures import eval_mask, summary
from convscope.figures.gradcam import (
    METHOD_NAMES, cam_colorbar, check_options, clear_axes, default_cam_layers, display_images, draw_cam, grid, open_model_and_split,
)

SCHEMA_VERSION = 1
DECIMALS = 4
GROUPS = ("all", "correct", "misclassified")
BASELINES = {"centre": ("black", "--"), "random": ("0.45", ":")}
EXAMPLES = 2  # images in sanity_maps.png
MAX_STEP_COLUMNS = 8  # randomisation steps shown in sanity_maps.png (evenly spaced, always the last)


def _number(value: float | None) -> float | None:
    """A JSON number rounded to DECIMALS, None for NaN; ``+ 0.0`` turns -0.0 into 0.0."""
    return None if value is None or not math.isfinite(value) else round(float(value), DECIMALS) + 0.0


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def _check_methods(methods: Sequence[str], cmap: str, alpha: float) -> list[str]:
    if isinstance(methods, str):  # list("gradcam") would check each letter
        raise ConfigError(f"methods must be a list of method names, got the string {methods!r}; write [{methods!r}]")
    methods = list(methods)
    if not methods:
        raise ConfigError(f"methods is empty; choose at least one of: {', '.join(METHODS)}")
    if len(set(methods)) < len(methods):
        raise ConfigError(f"methods lists a method twice: {methods}")
    for method in methods:
        check_options(method, cmap, alpha)
    return methods


# --- localisation on every test image --------------------------------------------------------------------------


def _localise(model: nn.Module, source: ImageSource, config: ModelConfig, layers: list[str], methods: list[str],
              batch_size: int, seed: int) -> dict[str, np.ndarray]:
    """Per test image: both pointing games of each method and layer and of the two baselines, and whether the
    prediction is right. One ``grad_cam`` call per batch and method gives every layer."""
    side = config.input_size
    tolerance = tolerance_pixels(side)
    noise = random_maps(len(source), side, side, seed)
    columns: dict[str, list[torch.Tensor]] = {}

    def add(who: str, maps: torch.Tensor, masks: torch.Tensor, near: torch.Tensor, flags: torch.Tensor | None = None) -> None:
        columns.setdefault(f"pointing_{who}", []).append(pointing_game(maps, near, tolerance=0, flags=flags))
        columns.setdefault(f"energy_{who}", []).append(energy_pointing_game(maps, masks, flags))

    start = 0
    for inputs, labels in tqdm(torch.utils.data.DataLoader(source, batch_size=batch_size), desc=f"{config.name} localisation", unit="batch"):
        rows = range(start, start + len(labels))
        masks = torch.stack([eval_mask(source.mask(i), config) for i in rows])
        near = dilate(masks, tolerance)  # once per batch, shared by every map
        add("centre", centre_maps(len(rows), side, side), masks, near)
        add("random", noise[start : start + len(rows)], masks, near)
        for method in methods:
            result = grad_cam(model, inputs, layers, method=method)
            for layer in layers:
                add(f"{method}_{layer}", result.maps[layer], masks, near, result.flags[layer])
        columns.setdefault("test_correct", []).append(result.targets == labels)
        start += len(labels)
    return {key: torch.cat(values).numpy() for key, values in columns.items()}


def _groups(pointing: np.ndarray, energy: np.ndarray, correct: np.ndarray) -> dict[str, dict]:
    """The SUMMARY of each group; both games are NaN for exactly the undefined maps."""
    out = {}
    for group, rows in zip(GROUPS, (np.ones_like(correct), correct, ~correct)):
        defined = np.isfinite(pointing[rows])
        out[group] = {"pointing_game": _number(summary(pointing[rows])["mean"]), "energy": _number(summary(energy[rows])["mean"]),
                      "n": int(defined.sum()), "flagged": int((~defined).sum())}
    return out


def _localisation_report(scores: dict[str, np.ndarray], method: str, layers: list[str]) -> dict:
    correct = scores["test_correct"]
    baselines = {who: _groups(scores[f"pointing_{who}"], scores[f"energy_{who}"], correct) for who in BASELINES}
    return {layer: _groups(scores[f"pointing_{method}_{layer}"], scores[f"energy_{method}_{layer}"], correct) | {"baselines": baselines}
            for layer in layers}


# --- the report ------------------------------------------------------------------------------------------------


def _faithfulness_report(curves: Curves, undefined: torch.Tensor, baseline: Curves, steps: int) -> dict:
    defined = ~undefined
    return {"deletion_auc": _number(curves.deletion_auc[defined].mean()), "insertion_auc": _number(curves.insertion_auc[defined].mean()),
            "random_deletion_auc": _number(baseline.deletion_auc.mean()), "random_insertion_auc": _number(baseline.insertion_auc.mean()),
            "n": int(defined.sum()), "flagged": int(undefined.sum()), "steps": steps}


def _sanity_report(sanity: Sanity) -> dict:
    return {"steps": sanity.steps, "spearman": [_number(v) for v in sanity.mean_spearman.tolist()],
            "ssim": [_number(v) for v in sanity.mean_ssim.tolist()], "n": int((~sanity.undefined).sum()),
            "flagged": int(sanity.undefined.sum()), "passes": sanity.passes}


# --- figures ---------------------------------------------------------------------------------------------------


def _note_figure(config: ModelConfig, text: str) -> Figure:
    fig = Figure(figsize=(6, 2), layout="constrained")
    fig.text(0.5, 0.5, f"{model_label(config)}: {text}", ha="center", va="center", fontsize=11, wrap=True)
    return fig


def _localisation_figure(config: ModelConfig, report: dict, methods: list[str]) -> Figure:
    layers = report["layers"]
    fig = Figure(figsize=(max(7.0, 1.6 + 0.45 * len(layers) * (len(methods) + 1)), 6.0), layout="constrained")
    axes = fig.subplots(2, 2, squeeze=False)
    x = np.arange(len(layers))
    width = 0.8 / len(methods)
    first = report["methods"][methods[0]]["localisation"][layers[0]]["baselines"]
    metrics = {"pointing_game": "pointing game: share of maps\nwhose maximum is on the object", "energy": "energy pointing game: share\nof the map's mass on the object"}
    for row, (metric, ylabel) in enumerate(metrics.items()):
        for col, group in enumerate(GROUPS[1:]):
            ax = axes[row, col]
            images = first["random"][group]["n"]
            flagged = 0
            for k, method in enumerate(methods):
                entries = [report["methods"][method]["localisation"][layer][group] for layer in layers]
                values = [np.nan if e[metric] is None else e[metric] for e in entries]
                flagged += sum(e["flagged"] for e in entries)
                ax.bar(x + (k - (len(methods) - 1) / 2) * width, values, width, color=f"C{k}", label=METHOD_NAMES[method])
            for who, (colour, style) in BASELINES.items():
                value = first[who][group][metric]
                if value is not None:
                    ax.axhline(value, color=colour, linestyle=style, linewidth=1.3, label=f"{who} baseline")
            if not images:
                ax.text(0.5, 0.5, f"no {group} test images", transform=ax.transAxes, ha="center", va="center")
            left_out = f"\n{flagged} undefined maps left out (all methods and layers)" if flagged else ""
            ax.set_title(f"{group} predictions: {images} test images{left_out}", fontsize=9)
            ax.set_xticks(x, layers, fontsize=SMALL)
            ax.set_xlabel("layer", fontsize=SMALL)
            ax.set_ylim(0, 1.05)
            ax.tick_params(axis="y", labelsize=SMALL)
            if col == 0:
                ax.set_ylabel(ylabel, fontsize=SMALL)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=SMALL)
    fig.suptitle(f"{model_label(config)}: is the CAM on the object? Test split, pointing tolerance {report['tolerance_px']:.1f} px\n"
                 "centre baseline: Gaussian at the image centre; random baseline: uniform noise", fontsize=10)
    return fig


def _curves_figure(config: ModelConfig, report: dict, curves: dict[str, Curves], undefined: dict[str, torch.Tensor], baseline: Curves) -> Figure:
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    fractions = baseline.fractions.numpy()
    aucs = report["methods"][next(iter(curves))]["faithfulness"]  # random-map AUCs are the same for every method
    kinds = {"deletion": ("deleted (set to the dataset mean)", "lower AUC is better"),
             "insertion": ("restored into the blurred image", "higher AUC is better")}
    for ax, (kind, (action, better)) in zip(axes, kinds.items()):
        for k, (method, c) in enumerate(curves.items()):
            auc = report["methods"][method]["faithfulness"][f"{kind}_auc"]
            mean = getattr(c, kind)[~undefined[method]].mean(0).numpy()
            ax.plot(fractions, mean, color=f"C{k}", label=f"{METHOD_NAMES[method]} (AUC {auc})")
        ax.plot(fractions, getattr(baseline, kind).mean(0).numpy(), color="0.45", linestyle="--",
                label=f"random map (AUC {aucs[f'random_{kind}_auc']})")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(f"share of pixels {action}, most salient first", fontsize=SMALL)
        ax.set_ylabel("softmax probability of the explained class (mean)", fontsize=SMALL)
        ax.set_title(f"{kind}: {better}", fontsize=9)
        ax.tick_params(labelsize=SMALL)
        ax.legend(fontsize=SMALL)
    fig.suptitle(f"{model_label(config)}: do the {report['layer']} maps find what the score needs? "
                 f"{report['num_images']} test images, {report['steps']} steps", fontsize=10)
    return fig


def _sanity_curves_figure(config: ModelConfig, report: dict, sanity: dict[str, Sanity]) -> Figure:
    names = next(iter(sanity.values())).steps
    fig = Figure(figsize=(max(9.0, 4 + 0.5 * len(names)), 4.4), layout="constrained")
    axes = fig.subplots(1, 2)
    x = np.arange(len(names) + 1)
    ticks = ["trained"] + [f"+{name}" for name in names]
    for k, (method, s) in enumerate(sanity.items()):
        verdict = {True: "passes", False: "fails", None: "undefined"}[s.passes]
        # Step 0 compares the trained model's maps with themselves: 1 by definition, drawn as the starting point.
        axes[0].plot(x, [1.0, *s.mean_spearman.tolist()], marker="o", markersize=3, color=f"C{k}", label=f"{METHOD_NAMES[method]}: {verdict}")
        axes[1].plot(x, [1.0, *s.mean_ssim.tolist()], marker="o", markersize=3, color=f"C{k}", label=METHOD_NAMES[method])
    axes[0].axhline(SANITY_THRESHOLD, color="0.45", linestyle="--", linewidth=1, label=f"pass: below {SANITY_THRESHOLD} when all are random")
    for ax, what in zip(axes, ("Spearman rank correlation", "SSIM")):
        ax.set_xticks(x, ticks, rotation=45, ha="right", fontsize=SMALL)
        ax.set_xlabel("stages re-initialised (cumulative, head first)", fontsize=SMALL)
        ax.set_ylabel(f"{what} with the trained model's map (mean)", fontsize=SMALL)
        ax.set_ylim(top=1.05)
        ax.tick_params(axis="y", labelsize=SMALL)
        ax.legend(fontsize=SMALL)
    fig.suptitle(f"{model_label(config)}: do the {report['layer']} maps change as the weights are destroyed? "
                 f"{report['num_images']} test images", fontsize=10)
    return fig


def _sanity_maps_figure(config: ModelConfig, report: dict, images: np.ndarray, names: list[str], sanity: dict[str, Sanity],
                        picked: list[int], cmap: str, alpha: float) -> Figure:
    methods = list(sanity)
    steps = next(iter(sanity.values())).steps
    fig, axes = grid(len(images) * len(methods), 2 + len(picked), f"{model_label(config)}: {report['layer']} maps as the stages are re-initialised, head first",
                     label_inches=1.2, title_lines=2)
    for e, image in enumerate(images):
        for k, (method, s) in enumerate(sanity.items()):
            row = e * len(methods) + k
            axes[row, 0].imshow(image)
            clear_axes(axes[row, 0])
            axes[row, 0].set_ylabel(f"{names[e]}\n{METHOD_NAMES[method]}", rotation=0, ha="right", va="center", fontsize=SMALL)
            draw_cam(axes[row, 1], image, s.original[e].numpy(), bool(s.undefined[e]), cmap, alpha)
            for col, step in enumerate(picked, start=2):
                randomised = s.maps[step, e]
                draw_cam(axes[row, col], image, randomised.numpy(), bool(undefined_maps(randomised[None])[0]), cmap, alpha)
                rho, similarity = s.spearman[step, e].item(), s.ssim[step, e].item()
                header = f"+{steps[step]} ({step + 1}/{len(steps)})\n" if row == 0 else ""
                axes[row, col].set_title(f"{header}ρ={rho:.2f} SSIM={similarity:.2f}", fontsize=SMALL)
    axes[0, 0].set_title("input", fontsize=SMALL)
    axes[0, 1].set_title("trained", fontsize=SMALL)
    cam_colorbar(fig, axes[:, 1:], cmap)
    return fig


# --- the entry point -------------------------------------------------------------------------------------------


def render_explanations(
    checkpoint_path: str | Path,
    index_path: str | Path,
    out_dir: str | Path,
    json_path: str | Path,
    *,
    methods: Sequence[str] = METHODS,
    layers: Sequence[str] | None = None,
    num_images: int = 30,
    steps: int = 16,
    seed: int = 0,
    batch_size: int = 64,
    cmap: str = "jet",
    alpha: float = 0.45,
) -> list[Path]:
    """Localisation, faithfulness and the sanity check of each CAM method for one trained model.

    Localisation (pointing game and energy-based pointing game, beside a centre and a random baseline) runs on
    every test image at every layer, split by correct and misclassified predictions; it is skipped when the
    dataset has no object masks. Deletion/insertion (with a random-map baseline) and the cascading
    randomisation use the deepest layer on ``num_images`` test images spread over the classes. Every map
    explains the predicted class. Deterministic for a given seed.

    Args:
        checkpoint_path: A convscope checkpoint.
        index_path: The dataset's ``index.json``.
        out_dir: Folder for the figures and ``explanations.npz`` (created).
        json_path: Where the JSON summary goes (schema in the module docstring).
        methods: CAM methods, from "gradcam", "gradcam++", "layercam".
        layers: Module names, shallowest first; None uses :func:`~convscope.figures.gradcam.default_cam_layers`.
        num_images: Size of the faithfulness and sanity sample (capped at the test split's size).
        steps: Deletion/insertion steps from 0 to every pixel.
        seed: Seed of the random baselines and the re-initialisation.
        batch_size: Images per forward pass.
        cmap: Matplotlib colour map of the heatmaps.
        alpha: Opacity of the heatmap over the image.

    Returns:
        Paths of the JSON, ``localisation.png``, ``deletion_insertion.png``, ``sanity_curves.png``,
        ``sanity_maps.png`` and ``explanations.npz``.
    """
    methods = _check_methods(methods, cmap, alpha)
    num_images, steps, batch_size = (_positive_int(name, value) for name, value in (("num_images", num_images), ("steps", steps), ("batch_size", batch_size)))
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    config, model, source = open_model_and_split(checkpoint_path, index_path, "test")
    layers = default_cam_layers(model, config.arch) if layers is None else layers
    layers = ActivationRecorder(model, layers).layers  # the engine's check: an unknown layer fails here, before any work
    if len(source) == 0:
        raise DatasetError(f"the test split of {str(index_path)!r} has no images")
    out_dir, layer, side = Path(out_dir), layers[-1], config.input_size
    has_masks = source.mask(0) is not None

    sample = sample_indices(source.labels, num_images)
    inputs = torch.stack([source[i][0] for i in sample])
    report = {"schema_version": SCHEMA_VERSION, "model": config.name, "arch": config.arch, "input_size": side, "split": "test",
              "layers": layers, "layer": layer, "num_images": len(sample), "sample_indices": sample, "steps": steps, "seed": seed,
              "tolerance_px": _number(tolerance_pixels(side)) if has_masks else None, "sanity_threshold": SANITY_THRESHOLD, "methods": {}}
    arrays: dict[str, object] = {"layers": np.asarray(layers, dtype=str), "sample_indices": np.asarray(sample, np.int64),
                                 "sample_labels": np.asarray([source.labels[i] for i in sample], np.int64)}

    scores = _localise(model, source, config, layers, methods, batch_size, seed) if has_masks else {}
    arrays |= scores
    skipped = None if has_masks else f"the {read_index(index_path).kind} dataset has no object masks"
    sanity: dict[str, Sanity] = {}
    curves: dict[str, Curves] = {}
    for method in tqdm(methods, desc=f"{config.name} faithfulness and sanity", unit="method"):
        sanity[method] = s = cascading_randomisation(model, inputs, layer, method=method, seed=seed)
        curves[method] = deletion_insertion(model, inputs, s.original, s.targets, steps=steps, batch_size=batch_size)
    targets = sanity[methods[0]].targets  # the predictions: the same for every method
    baseline = deletion_insertion(model, inputs, random_maps(len(sample), side, side, seed), targets, steps=steps, batch_size=batch_size)
    examples = list(range(min(EXAMPLES, len(sample))))
    for method in methods:
        s, c = sanity[method], curves[method]
        report["methods"][method] = {"localisation": _localisation_report(scores, method, layers) if has_masks else None,
                                     "localisation_skipped": skipped, "faithfulness": _faithfulness_report(c, s.undefined, baseline, steps),
                                     "sanity": _sanity_report(s)}
        arrays |= {f"cam_{method}": s.original.numpy(), f"undefined_{method}": s.undefined.numpy(), f"deletion_{method}": c.deletion.numpy(),
                   f"insertion_{method}": c.insertion.numpy(), f"sanity_spearman_{method}": s.spearman.numpy(),
                   f"sanity_ssim_{method}": s.ssim.numpy(), f"sanity_maps_{method}": s.maps[:, examples].numpy()}
    arrays |= {"sample_targets": targets.numpy(), "fractions": baseline.fractions.numpy(), "random_deletion": baseline.deletion.numpy(),
               "random_insertion": baseline.insertion.numpy(), "sanity_steps": np.asarray(sanity[methods[0]].steps, dtype=str)}

    paths = [save_text(json_path, json.dumps(report, indent=1) + "\n")]
    localisation = _localisation_figure(config, report, methods) if has_masks else _note_figure(config, f"localisation skipped: {skipped}")
    paths.append(save_figure(localisation, out_dir / "localisation.png"))
    paths.append(save_figure(_curves_figure(config, report, curves, {m: s.undefined for m, s in sanity.items()}, baseline), out_dir / "deletion_insertion.png"))
    paths.append(save_figure(_sanity_curves_figure(config, report, sanity), out_dir / "sanity_curves.png"))
    count = len(sanity[methods[0]].steps)
    picked = np.unique(np.linspace(0, count - 1, min(count, MAX_STEP_COLUMNS)).round().astype(int)).tolist()
    images = display_images(inputs[examples], config)
    names = [f"test image {sample[e]}\n{source.classes[source.labels[sample[e]]]}" for e in examples]
    paths.append(save_figure(_sanity_maps_figure(config, report, images, names, sanity, picked, cmap, alpha), out_dir / "sanity_maps.png"))
    paths.append(save_arrays(out_dir / "explanations.npz", **arrays))
    return paths
