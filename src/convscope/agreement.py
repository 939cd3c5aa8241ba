"""Do the models look at the same evidence? Each model's CAM for the same test images, compared pair by pair.

``compute_agreement`` explains the same test images (chosen once for all models, spread over the classes) with
every model at its deepest configured layer, resizes the maps to the smallest input size, and measures for every
pair of models and image the Spearman rank correlation of the two maps and their pointing agreement (do the two
maxima lie within the pointing game's tolerance of each other). ``convscope.figures.agreement`` draws them.

When the maps can be compared: every model reads the same test split (one dataset index); a model's evaluation
transform resizes the shorter side and crops the centre, so it keeps ``input_size / (resize or input_size)`` of
the shorter side. Models whose kept share differs by more than 2% see different parts of each image and their
maps would not line up: the comparison is skipped with that reason, as it is with a single model. Input sizes
alone may differ (224 vs 299 px): the maps are resized to the smallest.

``results/comparison/agreement.json`` (``convscope.contracts.Agreement``; floats rounded to 4 decimals, null where
undefined)::

    {"schema_version": 1, "models": [str], "skipped": str | null, "split": "test", "method": str,
     "layers": {model: str}, "input_sizes": {model: int}, "field_of_view": {model: float},
     "size": int | null,                 # the common side the maps are compared at
     "tolerance_px": float | null,       # pointing tolerance at that size (15 px at 224 px)
     "sample_indices": [int], "labels": [int], "predictions": {model: [int]},
     "pairs": [{"models": [a, b], "spearman": [per image], "pointing": [per image],
                "mean_spearman": float | null, "pointing_agreement": float | null, "n": int, "undefined": int}],
     "mean_spearman": float | null, "pointing_agreement": float | null}   # over every pair and defined image

A map is undefined (blank, constant or non-finite: ``convscope.explain.undefined_maps``) where it has no
maximum; an image counts in a pair's means only where both maps are defined (``n``; ``undefined`` left out).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from convscope.cam import grad_cam
from convscope.config import ModelConfig
from convscope.contracts import Agreement, PairAgreement
from convscope.data import sample_indices
from convscope.errors import ArtifactError, ConfigError
from convscope.evaluation import open_model_and_split
from convscope.explain import pointing_game, spearman, tolerance_pixels, undefined_maps
from convscope.io import json_number
from convscope.methods import METHODS
from convscope.models import default_cam_layers, find_layers
from convscope.training import load_checkpoint

SCHEMA_VERSION = 1
FIELD_OF_VIEW_TOLERANCE = 0.02  # relative: 224/256 and 299/342 (the Caltech profile) keep the same part


def field_of_view(config: ModelConfig) -> float:
    """The share of an image's shorter side that the evaluation transform keeps (resize, then centre crop)."""
    return config.input_size / (config.preprocessing.resize or config.input_size)


def why_not_comparable(configs: Sequence[ModelConfig]) -> str | None:
    """Why the models' maps cannot be laid over each other, or None when they can (see the module docstring)."""
    if len(configs) < 2:
        return "the build has one model; the comparison needs two or more"
    views = {c.name: field_of_view(c) for c in configs}
    if max(views.values()) - min(views.values()) > FIELD_OF_VIEW_TOLERANCE * max(views.values()):
        kept = ", ".join(f"{name} {view:.0%}" for name, view in views.items())
        return (
            f"the models see different parts of each test image (their centre crops keep {kept} of the shorter "
            "side), so their maps would not line up"
        )
    return None


def peak_agreement(a: Tensor, b: Tensor, tolerance: float) -> Tensor:
    """Per pair of N×H×W maps, whether their maxima lie within ``tolerance`` pixels of each other.

    A map's maximum may be a flat top of several pixels: the score is the mean of the share of ``a``'s top pixels
    within ``tolerance`` of ``b``'s top and the reverse (:func:`convscope.explain.pointing_game` with the other
    map's top as the mask), so it is symmetric, 0 or 1 for unique maxima, and 1 for identical maps.

    Returns:
        N floats in [0, 1], NaN where either map is undefined.
    """
    if a.shape != b.shape or a.dim() != 3:
        raise ValueError(f"peak_agreement needs two N×H×W tensors of one shape, got {tuple(a.shape)}, {tuple(b.shape)}")
    tops_a, tops_b = (m == m.amax((1, 2), keepdim=True) for m in (a, b))
    score = (pointing_game(a, tops_b, tolerance) + pointing_game(b, tops_a, tolerance)) / 2
    return torch.where(undefined_maps(a) | undefined_maps(b), torch.nan, score)


def rank_agreement(a: Tensor, b: Tensor) -> Tensor:
    """Per pair of N×H×W maps, the Spearman rank correlation of their pixels; NaN where either map is undefined."""
    rho = spearman(a, b)
    return torch.where(undefined_maps(a) | undefined_maps(b), torch.nan, rho)


def _pair(names: tuple[str, str], rho: np.ndarray, pointing: np.ndarray) -> PairAgreement:
    defined = np.isfinite(rho) & np.isfinite(pointing)
    return {
        "models": list(names),
        "spearman": [json_number(v) for v in rho],
        "pointing": [json_number(v) for v in pointing],
        "mean_spearman": json_number(rho[defined].mean()) if defined.any() else None,
        "pointing_agreement": json_number(pointing[defined].mean()) if defined.any() else None,
        "n": int(defined.sum()),
        "undefined": int((~defined).sum()),
    }


def agreement_of(maps: Mapping[str, Tensor], tolerance: float) -> tuple[list[PairAgreement], dict[str, float | None]]:
    """Spearman and pointing agreement of every pair of models (in the given order) per image, each pair's means,
    and the means over every pair and image where both maps are defined.

    Args:
        maps: Model name → N×H×W maps of the same N images at one size.
        tolerance: Pointing tolerance in pixels at that size.
    """
    pairs, pooled = [], {"spearman": [], "pointing": []}
    for a, b in itertools.combinations(maps, 2):
        rho = rank_agreement(maps[a], maps[b]).double().numpy()
        pointing = peak_agreement(maps[a], maps[b], tolerance).double().numpy()
        pairs.append(_pair((a, b), rho, pointing))
        defined = np.isfinite(rho) & np.isfinite(pointing)
        pooled["spearman"].append(rho[defined])
        pooled["pointing"].append(pointing[defined])
    values = {key: np.concatenate(arrays) if arrays else np.empty(0) for key, arrays in pooled.items()}
    means = {
        "mean_spearman": json_number(values["spearman"].mean()) if len(values["spearman"]) else None,
        "pointing_agreement": json_number(values["pointing"].mean()) if len(values["pointing"]) else None,
    }
    return pairs, means


@dataclass
class Found:
    """What ``compute_agreement`` found: the JSON report and what the figure shows."""

    report: Agreement
    configs: dict[str, ModelConfig]
    classes: list[str] = field(default_factory=list)
    display: ModelConfig | None = None  # the model whose input (the smallest) the figure shows
    inputs: Tensor | None = None  # that model's inputs, N×C×H×W
    maps: dict[str, Tensor] = field(default_factory=dict)  # per model, N×size×size
    probabilities: dict[str, Tensor] = field(default_factory=dict)  # per model, N×K

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays behind the figure (``agreement.npz``)."""
        if self.inputs is None:
            return {"models": np.asarray(self.report["models"], dtype=str)}
        arrays = {
            "models": np.asarray(list(self.maps), dtype=str),
            "inputs": self.inputs.numpy(),
            "sample_indices": np.asarray(self.report["sample_indices"], np.int64),
            "labels": np.asarray(self.report["labels"], np.int64),
        }
        for name, maps in self.maps.items():
            arrays[f"cam_{name}"] = maps.numpy().astype(np.float32)
            arrays[f"predictions_{name}"] = np.asarray(self.report["predictions"][name], np.int64)
        return arrays


def compute_agreement(
    checkpoints: Mapping[str, str | Path],
    index_path: str | Path,
    layers: Mapping[str, str | None] | None = None,
    num_images: int = 8,
    method: str = "gradcam",
    batch_size: int = 64,
) -> Found:
    """Each model's map of the same test images at its deepest layer, and how much the models agree.

    Args:
        checkpoints: Model name → checkpoint, in the order of the report.
        index_path: The dataset's ``index.json`` (the same for every model).
        layers: Model name → the layer to explain; missing or None: the deepest of
            :func:`~convscope.models.default_cam_layers`.
        num_images: Test images, spread over the classes (:func:`~convscope.data.sample_indices`).
        method: The CAM method (as ``figures.gradcam.method``).
        batch_size: Images per forward/backward pass.

    Returns:
        A :class:`Found`; its ``report`` has ``skipped`` set (and no pairs) when the maps cannot be compared.
    """
    if num_images < 1 or batch_size < 1:
        raise ConfigError(f"num_images and batch_size must be >= 1, got {num_images} and {batch_size}")
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    layers = dict(layers or {})
    configs = {name: ModelConfig.from_dict(load_checkpoint(path)["config"]) for name, path in checkpoints.items()}
    report: Agreement = {
        "schema_version": SCHEMA_VERSION,
        "models": list(configs),
        "skipped": why_not_comparable(list(configs.values())),
        "split": "test",
        "method": method,
        "layers": {},
        "input_sizes": {name: c.input_size for name, c in configs.items()},
        "field_of_view": {name: json_number(field_of_view(c)) for name, c in configs.items()},
        "size": None,
        "tolerance_px": None,
        "sample_indices": [],
        "labels": [],
        "predictions": {},
        "pairs": [],
        "mean_spearman": None,
        "pointing_agreement": None,
    }
    found = Found(report, configs)
    if report["skipped"] is not None:
        return found
    size = min(c.input_size for c in configs.values())
    indices: list[int] | None = None
    for name, path in checkpoints.items():
        config, model, source = open_model_and_split(path, index_path, "test")
        if indices is None:
            if len(source) == 0:
                raise ArtifactError(f"the test split of {str(index_path)!r} has no images; nothing to compare")
            indices, labels = sample_indices(source.labels, num_images), source.labels
            found.classes = source.classes
        elif source.labels != labels:
            raise ArtifactError(f"{name} reads a different test split from the other models; rerun its evaluation")
        layer = layers.get(name) or default_cam_layers(model, config.arch)[-1]
        (layer,) = find_layers(model, [layer])  # an unknown layer fails here, with the valid names
        inputs = torch.stack([source[i][0] for i in indices]).float()
        maps, logits = [], []
        for start in range(0, len(inputs), batch_size):
            result = grad_cam(model, inputs[start : start + batch_size], [layer], method=method)
            maps.append(result.maps[layer])
            logits.append(result.logits)
        cams = torch.cat(maps)
        if cams.shape[-1] != size:  # antialias: a downsampled map keeps its mass where it was
            cams = F.interpolate(cams[:, None], size=(size, size), mode="bilinear", antialias=True)[:, 0]
        found.maps[name] = cams.clamp(0, 1)
        found.probabilities[name] = torch.cat(logits).softmax(1)
        report["layers"][name] = layer
        report["predictions"][name] = found.probabilities[name].argmax(1).tolist()
        if config.input_size == size and found.inputs is None:
            found.display, found.inputs = config, inputs
    tolerance = tolerance_pixels(size)
    pairs, means = agreement_of(found.maps, tolerance)
    report.update(
        size=size,
        tolerance_px=json_number(tolerance),
        sample_indices=list(indices),
        labels=[labels[i] for i in indices],
        pairs=pairs,
        **means,
    )
    return found
