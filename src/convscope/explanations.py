"""The explain job's numbers: localisation, faithfulness and the sanity check of each CAM method for one model.

``compute_explanations`` measures them (with the metrics of ``convscope.explain``) and returns the JSON report
(``results/{model}/explanations.json``, its shape below) and the arrays behind it (``explanations.npz``);
``convscope.figures.explanations`` draws them.

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

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from convscope.cam import METHODS, grad_cam
from convscope.config import ModelConfig
from convscope.contracts import Explanations as ExplanationsReport
from convscope.data import ImageSource, read_index, sample_indices
from convscope.errors import ConfigError, DatasetError
from convscope.evaluation import open_model_and_split
from convscope.explain import (
    SANITY_THRESHOLD,
    Curves,
    Sanity,
    cascading_randomisation,
    centre_maps,
    deletion_insertion,
    dilate,
    energy_pointing_game,
    pointing_game,
    random_maps,
    summary,
    tolerance_pixels,
)
from convscope.models import default_cam_layers, find_layers
from convscope.transforms import eval_mask

SCHEMA_VERSION = 1
DECIMALS = 4
GROUPS = ("all", "correct", "misclassified")
BASELINES = ("centre", "random")
EXAMPLES = 2  # images whose randomised maps are kept for the sanity figure


@dataclass
class Explanations:
    """What the explain job measured: the JSON report, the arrays behind it, and what the figures draw."""

    config: ModelConfig
    report: ExplanationsReport
    arrays: dict[str, object]
    inputs: torch.Tensor  # the faithfulness/sanity sample, as fed to the model
    names: list[str]  # "test #i" and the class of each sample image
    curves: dict[str, Curves]
    sanity: dict[str, Sanity]
    baseline: Curves


def _number(value: float | None) -> float | None:
    """A JSON number rounded to DECIMALS, None for NaN; ``+ 0.0`` turns -0.0 into 0.0."""
    return None if value is None or not math.isfinite(value) else round(float(value), DECIMALS) + 0.0


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def check_methods(methods: Sequence[str]) -> list[str]:
    """The configured CAM methods as a list; ConfigError for a string, an empty list, a repeat or an unknown one."""
    if isinstance(methods, str):  # list("gradcam") would check each letter
        raise ConfigError(f"methods must be a list of method names, got the string {methods!r}; write [{methods!r}]")
    methods = list(methods)
    if not methods:
        raise ConfigError(f"methods is empty; choose at least one of: {', '.join(METHODS)}")
    if len(set(methods)) < len(methods):
        raise ConfigError(f"methods lists a method twice: {methods}")
    unknown = [method for method in methods if method not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method {unknown[0]!r}; choose one of: {', '.join(METHODS)}")
    return methods


# --- localisation on every test image --------------------------------------------------------------------------


def _localise(
    model: nn.Module,
    source: ImageSource,
    config: ModelConfig,
    layers: list[str],
    methods: list[str],
    batch_size: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """Per test image: both pointing games of each method and layer and of the two baselines, and whether the
    prediction is right. One ``grad_cam`` call per batch and method gives every layer."""
    side = config.input_size
    tolerance = tolerance_pixels(side)
    noise = random_maps(len(source), side, side, seed)
    columns: dict[str, list[torch.Tensor]] = {}

    def add(
        who: str, maps: torch.Tensor, masks: torch.Tensor, near: torch.Tensor, flags: torch.Tensor | None = None
    ) -> None:
        columns.setdefault(f"pointing_{who}", []).append(pointing_game(maps, near, tolerance=0, flags=flags))
        columns.setdefault(f"energy_{who}", []).append(energy_pointing_game(maps, masks, flags))

    start = 0
    for inputs, labels in tqdm(
        torch.utils.data.DataLoader(source, batch_size=batch_size), desc=f"{config.name} localisation", unit="batch"
    ):
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
        out[group] = {
            "pointing_game": _number(summary(pointing[rows])["mean"]),
            "energy": _number(summary(energy[rows])["mean"]),
            "n": int(defined.sum()),
            "flagged": int((~defined).sum()),
        }
    return out


def _localisation_report(scores: dict[str, np.ndarray], method: str, layers: list[str]) -> dict:
    correct = scores["test_correct"]
    baselines = {who: _groups(scores[f"pointing_{who}"], scores[f"energy_{who}"], correct) for who in BASELINES}
    return {
        layer: _groups(scores[f"pointing_{method}_{layer}"], scores[f"energy_{method}_{layer}"], correct)
        | {"baselines": baselines}
        for layer in layers
    }


# --- the report ------------------------------------------------------------------------------------------------


def _faithfulness_report(curves: Curves, undefined: torch.Tensor, baseline: Curves, steps: int) -> dict:
    defined = ~undefined
    return {
        "deletion_auc": _number(curves.deletion_auc[defined].mean()),
        "insertion_auc": _number(curves.insertion_auc[defined].mean()),
        "random_deletion_auc": _number(baseline.deletion_auc.mean()),
        "random_insertion_auc": _number(baseline.insertion_auc.mean()),
        "n": int(defined.sum()),
        "flagged": int(undefined.sum()),
        "steps": steps,
    }


def _sanity_report(sanity: Sanity) -> dict:
    return {
        "steps": sanity.steps,
        "spearman": [_number(v) for v in sanity.mean_spearman.tolist()],
        "ssim": [_number(v) for v in sanity.mean_ssim.tolist()],
        "n": int((~sanity.undefined).sum()),
        "flagged": int(sanity.undefined.sum()),
        "passes": sanity.passes,
    }


def compute_explanations(
    checkpoint_path: str | Path,
    index_path: str | Path,
    *,
    methods: Sequence[str] = METHODS,
    layers: Sequence[str] | None = None,
    num_images: int = 30,
    steps: int = 16,
    seed: int = 0,
    batch_size: int = 64,
) -> Explanations:
    """Localisation, faithfulness and the sanity check of each CAM method for one trained model.

    Localisation (pointing game and energy-based pointing game, beside a centre and a random baseline) runs on
    every test image at every layer, split by correct and misclassified predictions; it is skipped when the
    dataset has no object masks. Deletion/insertion (with a random-map baseline) and the cascading
    randomisation use the deepest layer on ``num_images`` test images spread over the classes. Every map
    explains the predicted class. Deterministic for a given seed.

    Args:
        checkpoint_path: A convscope checkpoint.
        index_path: The dataset's ``index.json``.
        methods: CAM methods, from "gradcam", "gradcam++", "layercam".
        layers: Module names, shallowest first; None uses :func:`~convscope.models.default_cam_layers`.
        num_images: Size of the faithfulness and sanity sample (capped at the test split's size).
        steps: Deletion/insertion steps from 0 to every pixel.
        seed: Seed of the random baselines and the re-initialisation.
        batch_size: Images per forward pass.
    """
    methods = check_methods(methods)
    num_images, steps, batch_size = (
        _positive_int(name, value)
        for name, value in (("num_images", num_images), ("steps", steps), ("batch_size", batch_size))
    )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    config, model, source = open_model_and_split(checkpoint_path, index_path, "test")
    layers = default_cam_layers(model, config.arch) if layers is None else layers
    layers = find_layers(model, layers)  # an unknown layer fails here, before any work
    if len(source) == 0:
        raise DatasetError(f"the test split of {str(index_path)!r} has no images")
    layer, side = layers[-1], config.input_size
    has_masks = source.mask(0) is not None

    sample = sample_indices(source.labels, num_images)
    inputs = torch.stack([source[i][0] for i in sample])
    report: ExplanationsReport = {
        "schema_version": SCHEMA_VERSION,
        "model": config.name,
        "arch": config.arch,
        "input_size": side,
        "split": "test",
        "layers": layers,
        "layer": layer,
        "num_images": len(sample),
        "sample_indices": sample,
        "steps": steps,
        "seed": seed,
        "tolerance_px": _number(tolerance_pixels(side)) if has_masks else None,
        "sanity_threshold": SANITY_THRESHOLD,
        "methods": {},
    }
    arrays: dict[str, object] = {
        "layers": np.asarray(layers, dtype=str),
        "sample_indices": np.asarray(sample, np.int64),
        "sample_labels": np.asarray([source.labels[i] for i in sample], np.int64),
    }

    scores = _localise(model, source, config, layers, methods, batch_size, seed) if has_masks else {}
    arrays |= scores
    skipped = None if has_masks else f"the {read_index(index_path).kind} dataset has no object masks"
    sanity: dict[str, Sanity] = {}
    curves: dict[str, Curves] = {}
    for method in tqdm(methods, desc=f"{config.name} faithfulness and sanity", unit="method"):
        sanity[method] = s = cascading_randomisation(model, inputs, layer, method=method, seed=seed)
        curves[method] = deletion_insertion(model, inputs, s.original, s.targets, steps=steps, batch_size=batch_size)
    targets = sanity[methods[0]].targets  # the predictions: the same for every method
    baseline = deletion_insertion(
        model, inputs, random_maps(len(sample), side, side, seed), targets, steps=steps, batch_size=batch_size
    )
    examples = list(range(min(EXAMPLES, len(sample))))
    for method in methods:
        s, c = sanity[method], curves[method]
        report["methods"][method] = {
            "localisation": _localisation_report(scores, method, layers) if has_masks else None,
            "localisation_skipped": skipped,
            "faithfulness": _faithfulness_report(c, s.undefined, baseline, steps),
            "sanity": _sanity_report(s),
        }
        arrays |= {
            f"cam_{method}": s.original.numpy(),
            f"undefined_{method}": s.undefined.numpy(),
            f"deletion_{method}": c.deletion.numpy(),
            f"insertion_{method}": c.insertion.numpy(),
            f"sanity_spearman_{method}": s.spearman.numpy(),
            f"sanity_ssim_{method}": s.ssim.numpy(),
            f"sanity_maps_{method}": s.maps[:, examples].numpy(),
        }
    arrays |= {
        "sample_targets": targets.numpy(),
        "fractions": baseline.fractions.numpy(),
        "random_deletion": baseline.deletion.numpy(),
        "random_insertion": baseline.insertion.numpy(),
        "sanity_steps": np.asarray(sanity[methods[0]].steps, dtype=str),
    }

    names = [f"test image {sample[e]}\n{source.classes[source.labels[sample[e]]]}" for e in examples]
    return Explanations(config, report, arrays, inputs[examples], names, curves, sanity, baseline)
