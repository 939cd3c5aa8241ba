"""The explain job's numbers: localisation, faithfulness and the sanity check of each CAM method for one model.

``compute_explanations`` measures them (with the metrics of ``convscope.explain``) and returns the JSON report
(``results/{model}/explanations.json``, its shape below) and the arrays behind it (``explanations.npz``);
``write_explanations``, the explain job, writes them, and the ``explanation_quality`` figure family
(``convscope.figures.explanations``) draws them from those files.

The JSON (``schema_version`` 1; floats rounded to 4 decimals, null where undefined)::

    {"schema_version": 1, "model": str, "arch": str, "input_size": int, "split": "test",
     "layers": [str],           # localisation layers, shallowest first
     "layer": str,              # the deepest: faithfulness and sanity check
     "num_images": int,         # images of the faithfulness/sanity sample (spread over classes)
     "sample_indices": [int],   # their positions in the test split
     "steps": int, "seed": int,
     "precision": str,          # autocast of the forward passes scoring perturbed images (maps are always fp32)
     "tolerance_px": float | null,        # pointing-game tolerance at this input size; null without masks
     "sanity_threshold": float,           # a method passes when its final mean Spearman is below this
     "methods": {<method>: {
        "localisation": {<layer>: {<group>: SUMMARY, ...,
                                   "baselines": {"centre": {<group>: SUMMARY}, "random": {<group>: SUMMARY}}}} | null,
        "localisation_skipped": str | null,   # why localisation is null (the dataset has no object masks)
        "faithfulness": {"deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc": float,
                         "n": int, "flagged": int, "steps": int},
        "road": {"morf", "lerf", "random_morf", "random_lerf": float,   # mean target probability over the fractions,
                                                                         # on the sample's first road_images images
                 "fractions": [float], "noise": float, "n": int, "flagged": int},
        "sanity": {"steps": [stage randomised at each step, head first, cumulative],
                   "spearman": [mean per step], "ssim": [mean per step], "n": int, "flagged": int,
                   "passes": bool | null}}}}

A group is ``all``, ``correct`` or ``misclassified`` (test images by the model's prediction) and a SUMMARY is
``{"pointing_game": mean, "energy": mean, "n": maps counted, "flagged": undefined maps left out}``. The
localisation runs on every test image; method AUCs average the images whose map is defined (``n``; ``flagged``
left out), the random-map AUCs average every sample image. ROAD (Rong et al. 2022) removes the most (MoRF, lower
is better) or least (LeRF, higher is better) salient pixels at each fraction, fills them by noisy linear
imputation and averages the target's softmax probability over the fractions and the defined maps.

Every map is computed once: one ``cams`` call per test batch gives every method at every layer, and the sample's
maps from those calls serve faithfulness, ROAD and the sanity check's trained step.

``explanations.npz`` holds ``layers``, ``sample_indices``, ``sample_labels``, ``sample_targets``, ``fractions``
(S+1), ``random_deletion``/``random_insertion`` (N×(S+1)), ``sanity_steps``; per method ``cam_<m>`` (N×H×W maps
at the deepest layer), ``undefined_<m>``, ``deletion_<m>``/``insertion_<m>``, ``sanity_spearman_<m>``/
``sanity_ssim_<m>`` (S×N), ``road_morf_<m>``/``road_lerf_<m>`` (R×F, R = min(road_images, N)) beside
``road_fractions`` and
``random_road_morf``/``random_road_lerf``, ``sanity_maps_<m>`` (S×E×H×W for the E example images of
``sanity_maps.png``) and ``sanity_undefined_<m>`` (S×E), and those images as shown (``example_images``, E×H×W×3
in [0, 1]) with their ``example_classes``;
with masks, per test image, ``test_correct``, ``pointing_<m>_<layer>``/``energy_<m>_<layer>`` (NaN for undefined
maps) and the baselines' ``pointing_centre``/``energy_centre``/``pointing_random``/``energy_random``.

``maps.npz`` holds the sample's ``inputs`` (float32 N×C×H×W, as fed to the model), ``targets``, ``layers``,
``methods`` and per method and layer ``cam_<method>_<layer>`` (N×H×W, scaled as ``gradcam.npz``) and
``flags_<method>_<layer>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from convscope import runtime
from convscope.batches import batches
from convscope.cam import CamResult, cams, check_methods
from convscope.config import ModelConfig
from convscope.contracts import LOCALISATION_GROUPS
from convscope.contracts import Explanations as ExplanationsReport
from convscope.data import ImageSource, read_index, sample_indices
from convscope.errors import ConfigError, DatasetError
from convscope.evaluation import open_model_and_split
from convscope.explain import (
    ROAD_NOISE,
    SANITY_THRESHOLD,
    Curves,
    Road,
    Sanity,
    cascading_randomisations,
    centre_maps,
    deletion_insertion,
    dilate,
    energy_pointing_game,
    pointing_game,
    random_maps,
    road,
    summary,
    tolerance_pixels,
    undefined_maps,
)
from convscope.io import json_number, write_json_atomic, write_npz_atomic
from convscope.models import default_cam_layers, find_layers, inference_copy
from convscope.transforms import display_images, eval_mask

SCHEMA_VERSION = 1
BASELINES = ("centre", "random")
EXAMPLES = 2  # images whose randomised maps are kept for the sanity figure


@dataclass
class Explanations:
    """What the explain job measured: the JSON report and the arrays behind it."""

    report: ExplanationsReport
    arrays: dict[str, object]  # explanations.npz
    maps: dict[str, object]  # maps.npz: the sample's inputs and maps of every method at every layer


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    return value


# --- localisation on every test image --------------------------------------------------------------------------


def _select(found: dict[str, CamResult], rows: torch.Tensor) -> dict[str, CamResult]:
    """The rows ``rows`` of every method's result."""
    return {
        method: CamResult(
            logits=r.logits[rows],
            targets=r.targets[rows],
            maps={layer: m[rows] for layer, m in r.maps.items()},
            raw={layer: m[rows] for layer, m in r.raw.items()},
            flags={layer: f[rows] for layer, f in r.flags.items()},
        )
        for method, r in found.items()
    }


def _concat(parts: list[dict[str, CamResult]]) -> dict[str, CamResult]:
    """Every method's results of consecutive batches as one."""
    first = parts[0]
    return {
        method: CamResult(
            logits=torch.cat([p[method].logits for p in parts]),
            targets=torch.cat([p[method].targets for p in parts]),
            maps={layer: torch.cat([p[method].maps[layer] for p in parts]) for layer in first[method].maps},
            raw={layer: torch.cat([p[method].raw[layer] for p in parts]) for layer in first[method].raw},
            flags={layer: torch.cat([p[method].flags[layer] for p in parts]) for layer in first[method].flags},
        )
        for method in first
    }


def _localise(
    model: nn.Module,
    source: ImageSource,
    config: ModelConfig,
    layers: list[str],
    methods: list[str],
    batch_size: int,
    seed: int,
    sample: list[int],
) -> tuple[dict[str, np.ndarray], dict[str, CamResult]]:
    """Per test image: both pointing games of each method and layer and of the two baselines, and whether the
    prediction is right; and the maps of the ``sample`` images (in its order), kept for the other metrics. One
    ``cams`` call per batch gives every method at every layer."""
    side = config.input_size
    tolerance = tolerance_pixels(side)
    noise = random_maps(len(source), side, side, seed)
    columns: dict[str, list[torch.Tensor]] = {}
    position = {index: k for k, index in enumerate(sample)}
    kept: list[dict[str, CamResult]] = []
    order: list[int] = []

    def add(
        who: str, maps: torch.Tensor, masks: torch.Tensor, near: torch.Tensor, flags: torch.Tensor | None = None
    ) -> None:
        columns.setdefault(f"pointing_{who}", []).append(pointing_game(maps, near, tolerance=0, flags=flags))
        columns.setdefault(f"energy_{who}", []).append(energy_pointing_game(maps, masks, flags))

    # The maps' passes run in fp32 and the default layout (channels_last moved maps by up to 0.05); in-memory
    # datasets are transformed a batch at a time, with the per-image transform's values.
    setup = runtime.Setup(device=torch.device("cpu"), precision="fp32", channels_last=False, workers=0)
    start = 0
    for inputs, labels in tqdm(
        batches(source, config, False, batch_size, setup), desc=f"{config.name} localisation", unit="batch"
    ):
        rows = range(start, start + len(labels))
        masks = torch.stack([eval_mask(source.mask(i), config) for i in rows])
        near = dilate(masks, tolerance)  # once per batch, shared by every map
        add("centre", centre_maps(len(rows), side, side), masks, near)
        add("random", noise[start : start + len(rows)], masks, near)
        found = cams(model, inputs, layers, methods, batch_size=batch_size)
        for method in methods:
            for layer in layers:
                add(f"{method}_{layer}", found[method].maps[layer], masks, near, found[method].flags[layer])
        columns.setdefault("test_correct", []).append(found[methods[0]].targets == labels)
        picked = [j for j, i in enumerate(rows) if i in position]
        if picked:
            kept.append(_select(found, torch.tensor(picked)))
            order += [position[rows[j]] for j in picked]
        start += len(labels)
    in_order = torch.empty(len(order), dtype=torch.long)
    in_order[torch.tensor(order)] = torch.arange(len(order))
    scores = {key: torch.cat(values).numpy() for key, values in columns.items()}
    return scores, _select(_concat(kept), in_order)


def _groups(pointing: np.ndarray, energy: np.ndarray, correct: np.ndarray) -> dict[str, dict]:
    """The SUMMARY of each group; both games are NaN for exactly the undefined maps."""
    out = {}
    for group, rows in zip(LOCALISATION_GROUPS, (np.ones_like(correct), correct, ~correct)):
        defined = np.isfinite(pointing[rows])
        out[group] = {
            "pointing_game": json_number(summary(pointing[rows])["mean"]),
            "energy": json_number(summary(energy[rows])["mean"]),
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


def _scores(undefined: torch.Tensor, **scores: tuple[torch.Tensor, torch.Tensor]) -> dict:
    """Each score's mean over the images whose map is defined, beside its random-map baseline's mean over all
    images (``random_<name>``), and how many images each mean covers."""
    defined = ~undefined
    means = {}
    for name, (per_image, baseline) in scores.items():
        means |= {name: json_number(per_image[defined].mean()), f"random_{name}": json_number(baseline.mean())}
    return means | {"n": int(defined.sum()), "flagged": int(undefined.sum())}


def _faithfulness_report(curves: Curves, undefined: torch.Tensor, baseline: Curves, steps: int) -> dict:
    deletion, insertion = (curves.deletion_auc, baseline.deletion_auc), (curves.insertion_auc, baseline.insertion_auc)
    return _scores(undefined, deletion_auc=deletion, insertion_auc=insertion) | {"steps": steps}


def _road_report(road_: Road, undefined: torch.Tensor, baseline: Road) -> dict:
    fractions = [json_number(f) for f in road_.fractions.tolist()]
    scores = _scores(undefined, morf=(road_.morf, baseline.morf), lerf=(road_.lerf, baseline.lerf))
    return scores | {"fractions": fractions, "noise": ROAD_NOISE}


def _sanity_report(sanity: Sanity) -> dict:
    return {
        "steps": sanity.steps,
        "spearman": [json_number(v) for v in sanity.mean_spearman.tolist()],
        "ssim": [json_number(v) for v in sanity.mean_ssim.tolist()],
        "n": int((~sanity.undefined).sum()),
        "flagged": int(sanity.undefined.sum()),
        "passes": sanity.passes,
    }


def scoring_model(model: nn.Module, precision: str) -> nn.Module:
    """The copy of ``model`` that scores perturbed images on the CPU (deletion, insertion, ROAD): BatchNorm folded,
    weights in ``precision``, channels_last where :func:`convscope.runtime.pick_channels_last` says it is faster."""
    channels_last = runtime.pick_channels_last(precision, torch.device("cpu"), model)
    return inference_copy(model, runtime.dtype_of(precision), channels_last)


def compute_explanations(
    checkpoint_path: str | Path,
    index_path: str | Path,
    *,
    methods: Sequence[str] = ("gradcam", "gradcam++", "layercam"),
    layers: Sequence[str] | None = None,
    num_images: int = 30,
    road_images: int = 10,
    steps: int = 16,
    seed: int = 0,
    batch_size: int = 64,
    precision: str = "auto",
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
        methods: CAM methods, from :data:`convscope.methods.METHODS`.
        layers: Module names, shallowest first; None uses :func:`~convscope.models.default_cam_layers`.
        num_images: Size of the faithfulness and sanity sample (capped at the test split's size).
        road_images: How many of the sample's first images ROAD measures (its imputation is the costly part).
        steps: Deletion/insertion steps from 0 to every pixel.
        seed: Seed of the random baselines and the re-initialisation.
        batch_size: Images per forward pass.
        precision: Autocast of the forward passes that score perturbed images (deletion, insertion, ROAD), as
            ``runtime.precision``; ``auto`` takes bf16 where the CPU computes it natively. The maps, their
            gradients and the sanity check stay fp32.
    """
    methods = check_methods(methods)
    num_images, road_images, steps, batch_size = (
        _positive_int(name, value)
        for name, value in (
            ("num_images", num_images),
            ("road_images", road_images),
            ("steps", steps),
            ("batch_size", batch_size),
        )
    )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    config, model, source = open_model_and_split(checkpoint_path, index_path, "test")
    layers = default_cam_layers(model, config.arch) if layers is None else layers
    layers = find_layers(model, layers)  # an unknown layer fails here, before any work
    if len(source) == 0:
        raise DatasetError(f"the test split of {str(index_path)!r} has no images")
    layer, side = layers[-1], config.input_size
    scoring = runtime.pick_precision(precision, torch.device("cpu"), model, backward=False)
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
        "precision": scoring,
        "tolerance_px": json_number(tolerance_pixels(side)) if has_masks else None,
        "sanity_threshold": SANITY_THRESHOLD,
        "methods": {},
    }
    arrays: dict[str, object] = {
        "layers": np.asarray(layers, dtype=str),
        "sample_indices": np.asarray(sample, np.int64),
        "sample_labels": np.asarray([source.labels[i] for i in sample], np.int64),
    }

    if has_masks:
        scores, found = _localise(model, source, config, layers, methods, batch_size, seed, sample)
    else:
        scores = {}
        found = _concat([cams(model, x, layers, methods, batch_size=batch_size) for x in inputs.split(batch_size)])
    arrays |= scores
    skipped = None if has_masks else f"the {read_index(index_path).kind} dataset has no object masks"
    targets = found[methods[0]].targets  # the predictions: the same for every method
    sanity = cascading_randomisations(
        model,
        inputs,
        layer,
        methods,
        seed=seed,
        trained=found,
        batch_size=batch_size,
    )
    scorer = scoring_model(model, scoring)  # the maps are done: from here on, only no-grad forwards
    curves: dict[str, Curves] = {}
    roads: dict[str, Road] = {}
    road_options = {"seed": seed, "batch_size": batch_size, "precision": scoring}
    n_road = min(road_images, len(sample))  # sample_indices is round-robin over classes, so a prefix stays spread
    for method in tqdm(methods, desc=f"{config.name} faithfulness and ROAD", unit="method"):
        maps = found[method].maps[layer]
        curves[method] = deletion_insertion(scorer, inputs, maps, targets, steps, batch_size, scoring)
        roads[method] = road(scorer, inputs[:n_road], maps[:n_road], targets[:n_road], **road_options)
    noise = random_maps(len(sample), side, side, seed)
    baseline = deletion_insertion(scorer, inputs, noise, targets, steps, batch_size, scoring)
    random_road = road(scorer, inputs[:n_road], noise[:n_road], targets[:n_road], **road_options)
    examples = list(range(min(EXAMPLES, len(sample))))
    for method in methods:
        s, c, r = sanity[method], curves[method], roads[method]
        shown = s.maps[:, examples]  # S×E: the randomised maps sanity_maps.png shows
        report["methods"][method] = {
            "localisation": _localisation_report(scores, method, layers) if has_masks else None,
            "localisation_skipped": skipped,
            "faithfulness": _faithfulness_report(c, s.undefined, baseline, steps),
            "road": _road_report(r, s.undefined[:n_road], random_road),
            "sanity": _sanity_report(s),
        }
        arrays |= {
            f"cam_{method}": s.original.numpy(),
            f"undefined_{method}": s.undefined.numpy(),
            f"deletion_{method}": c.deletion.numpy(),
            f"insertion_{method}": c.insertion.numpy(),
            f"road_morf_{method}": r.morf.numpy(),
            f"road_lerf_{method}": r.lerf.numpy(),
            f"sanity_spearman_{method}": s.spearman.numpy(),
            f"sanity_ssim_{method}": s.ssim.numpy(),
            f"sanity_maps_{method}": shown.numpy(),
            f"sanity_undefined_{method}": undefined_maps(shown.flatten(0, 1)).view(shown.shape[:2]).numpy(),
        }
    arrays |= {
        "sample_targets": targets.numpy(),
        "fractions": baseline.fractions.numpy(),
        "random_deletion": baseline.deletion.numpy(),
        "random_insertion": baseline.insertion.numpy(),
        "road_fractions": random_road.fractions.numpy(),
        "random_road_morf": random_road.morf.numpy(),
        "random_road_lerf": random_road.lerf.numpy(),
        "sanity_steps": np.asarray(sanity[methods[0]].steps, dtype=str),
        # What the sanity figure shows of its example images, so that drawing it needs neither torch nor the model.
        "example_images": display_images(inputs[examples], config),
        "example_classes": np.asarray([source.classes[source.labels[sample[e]]] for e in examples], dtype=str),
    }
    maps_npz: dict[str, object] = {
        "inputs": inputs.numpy().astype(np.float32),
        "targets": targets.numpy(),
        "layers": np.asarray(layers, dtype=str),
        "methods": np.asarray(methods, dtype=str),
    }
    for method in methods:
        for name in layers:
            maps_npz[f"cam_{method}_{name}"] = found[method].maps[name].numpy()
            maps_npz[f"flags_{method}_{name}"] = found[method].flags[name].numpy()

    return Explanations(report, arrays, maps_npz)


def write_explanations(
    checkpoint_path: str | Path, index_path: str | Path, out_dir: str | Path, json_path: str | Path, **settings: Any
) -> list[Path]:
    """The explain job: measures one model's explanation quality with ``settings`` (the keyword arguments of
    :func:`compute_explanations`) and writes the JSON report to ``json_path``, ``explanations.npz`` and ``maps.npz``
    to ``out_dir``. The ``explanation_quality`` figure family draws them.

    Returns:
        The paths written.
    """
    found = compute_explanations(checkpoint_path, index_path, **settings)
    return [
        write_json_atomic(json_path, found.report),
        write_npz_atomic(Path(out_dir) / "explanations.npz", **found.arrays),
        write_npz_atomic(Path(out_dir) / "maps.npz", **found.maps),
    ]
