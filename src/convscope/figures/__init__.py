"""Figures that explain a trained model, one module per family, declared once in ``FAMILIES``.

A family is a module ``convscope.figures.<module>`` with ``render(inputs, out_dir, settings) -> list[Path]``:
``inputs`` maps what it reads (``checkpoint``, ``index``, and the artifacts its entry names in ``reads``) to
paths, ``settings`` is its slice of the config for one model. The workflow's figure rule, each
job's inputs, settings and code dependencies, the report's list of figure folders and the family's report
section (``report/templates/family.qmd.j2`` until ``models.qmd.j2`` has a block for it) all follow from the
entry. This module imports no plotting or torch code: the workflow reads it when it starts.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from convscope.config import FiguresConfig


@dataclass(frozen=True)
class Family:
    """One figure family: ``figures/{model}/{name}/``, drawn by ``convscope.figures.<module>.render``."""

    name: str
    module: str
    title: str
    reads: tuple[str, ...]  # artifacts beyond the checkpoint and the dataset index, named as in figure_inputs
    settings: Callable[[FiguresConfig, str], dict]  # (figures config, model name) -> render's settings

    @property
    def module_name(self) -> str:
        return f"{__name__}.{self.module}"


def _layers(layers: Mapping[str, object], model: str) -> list[str] | None:
    chosen = layers.get(model)
    return None if chosen is None else list(chosen)


def _gradcam(figures: FiguresConfig, model: str) -> dict:
    cam = figures.gradcam
    return {
        "layers": _layers(cam.layers, model),
        "num_images": cam.num_images,
        "correct_only": cam.correct_only,
        "method": cam.method,
        "cmap": cam.cmap,
        "alpha": cam.alpha,
    }


def _failures(figures: FiguresConfig, model: str) -> dict:
    # The failure maps are Grad-CAM's own: same method and colours, at its deepest layer.
    cam = figures.gradcam
    layers = _layers(cam.layers, model)
    return {
        "k": figures.failures.k,
        "layer": layers[-1] if layers else None,
        "method": cam.method,
        "cmap": cam.cmap,
        "alpha": cam.alpha,
    }


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family("architecture", "architecture", "Architecture", (), lambda figures, model: {}),
        Family(
            "filters",
            "filters",
            "Filters",
            (),
            lambda figures, model: {"layers": _layers(figures.filters.layers, model), "cmap": figures.filters.cmap},
        ),
        Family(
            "feature_maps",
            "features",
            "Feature maps",
            (),
            lambda figures, model: {
                "layers": _layers(figures.feature_maps.layers, model),
                "num_images": figures.feature_maps.num_images,
                "top_k": figures.feature_maps.top_k,
            },
        ),
        Family("training", "training", "Training", ("history", "metrics"), lambda figures, model: {}),
        Family("gradcam", "gradcam", "Grad-CAM", ("predictions",), _gradcam),
        Family("failures", "failures", "Failure cases", ("predictions",), _failures),
        Family(
            "explanation_quality",
            "explanations",
            "Explanation quality",
            ("explanations", "explanation_arrays"),
            # The heatmaps look as in the Grad-CAM figures.
            lambda figures, model: {"cmap": figures.gradcam.cmap, "alpha": figures.gradcam.alpha},
        ),
    )
}


def render(family: str, inputs: Mapping[str, str], out_dir: str | Path, settings: dict) -> list[Path]:
    """Draws one family for one model into ``out_dir`` (see the module docstring)."""
    module = importlib.import_module(FAMILIES[family].module_name)
    written = module.render(inputs=inputs, out_dir=Path(out_dir), settings=settings)
    print(f"{family}: wrote {len(written)} files to {out_dir}")
    return written
