# Helper functions of the workflow: config lookups, paths, wildcard constraints.
# The config is validated (defaults filled in) before any rule is defined, so a bad
# value stops the run with one line naming the key, before any job starts.
import dataclasses
import os
import sys
from pathlib import Path

import convscope
from convscope import paths
from convscope.config import ConfigError, load_config

try:
    CONFIG = load_config(config)
except ConfigError as error:
    sys.exit(f"convscope: error: {error}")

DATA_INDEX = paths.DATA_INDEX.format(dataset=CONFIG.dataset.folder_name)
PACKAGE_DIR = Path(convscope.__file__).parent


def package_files(*modules):
    """Source files of the package modules a job runs; editing one reruns the jobs that list it."""
    files = [PACKAGE_DIR / f"{module.replace('.', '/')}.py" for module in modules]
    here = Path.cwd()
    return [os.path.relpath(f, here) if f.is_relative_to(here) else str(f) for f in files]


def dataset_params():
    return dataclasses.asdict(CONFIG.dataset)


def model_params(wildcards):
    """The resolved config of one model: changing it reruns only that model's jobs."""
    return dataclasses.asdict(CONFIG.model(wildcards.model))


def runtime_params():
    return dataclasses.asdict(CONFIG.runtime)


def gpus():
    return 1 if CONFIG.runtime.device == "cuda" else 0


def all_outputs():
    return [paths.REPORT_HTML, paths.REPORT_PDF]


FIGURE_FAMILIES = ["architecture", "filters", "feature_maps", "training", "gradcam", "failures"]


def figure_settings(wildcards):
    """One family's figure settings for one model: changing another family's settings reruns nothing here."""
    figures = CONFIG.raw["figures"]
    family = wildcards.family
    if family in ("architecture", "training"):
        return {}
    if family == "failures":
        cam = figures["gradcam"]
        return {"k": figures["failures"]["k"], "layer": (cam["layers"].get(wildcards.model) or [None])[-1],
                "method": cam["method"], "cmap": cam["cmap"], "alpha": cam["alpha"]}
    settings = dict(figures[family])
    settings["layers"] = settings["layers"].get(wildcards.model)
    return settings


def figure_inputs(wildcards):
    """What one figure family reads: the checkpoint and data, plus metrics or predictions where it uses them."""
    inputs = {
        "index": DATA_INDEX,
        "checkpoint": paths.CHECKPOINT.format(model=wildcards.model),
        "code": package_files("figures.__init__", f"figures.{FIGURE_MODULES[wildcards.family]}", "cam"),
    }
    if wildcards.family == "training":
        inputs["metrics"] = paths.METRICS.format(model=wildcards.model)
    if wildcards.family in ("gradcam", "failures"):
        inputs["predictions"] = paths.PREDICTIONS.format(model=wildcards.model)
    return inputs


FIGURE_MODULES = {"architecture": "architecture", "filters": "filters", "feature_maps": "features",
                  "training": "training", "gradcam": "gradcam", "failures": "failures"}


def report_source_inputs(wildcards):
    """Everything the generated report sections read, per model."""
    models = CONFIG.model_names
    return {
        "index": DATA_INDEX,
        "checkpoints": expand(paths.CHECKPOINT, model=models),
        "metrics": expand(paths.METRICS, model=models),
        "figures": expand(paths.FIGURE_DIR, model=models, family=FIGURE_FAMILIES),
        "explanations": expand(paths.EXPLANATIONS, model=models),
        "explanation_figures": expand(paths.EXPLANATION_FIGURES, model=models),
        "code": package_files("report.sources", "report.render", "figures.gradcam"),
    }


def report_benchmarks():
    """Benchmark files of the jobs before the report, for its rule-time table.

    A parameter, not an input: a deleted benchmark file must not rebuild the models, it only drops a table row.
    """
    models = CONFIG.model_names
    return (
        [f"{paths.BENCHMARKS}/prepare_data.tsv"]
        + expand(f"{paths.BENCHMARKS}/{{rule}}/{{model}}.tsv", rule=["train", "evaluate"], model=models)
        + expand(f"{paths.BENCHMARKS}/figures/{{model}}/{{family}}.tsv", model=models, family=FIGURE_FAMILIES)
        + expand(f"{paths.BENCHMARKS}/explain/{{model}}.tsv", model=models)
    )


def explanation_settings(wildcards):
    """The explanation-quality settings of one model (see schema.yaml, explanations)."""
    settings = dict(CONFIG.raw["explanations"])
    settings["layers"] = settings["layers"].get(wildcards.model)
    settings["batch_size"] = CONFIG.runtime.eval_batch_size
    # Heatmaps look alike in every figure: the colour map and opacity are the Grad-CAM figures' ones.
    settings["cmap"], settings["alpha"] = CONFIG.raw["figures"]["gradcam"]["cmap"], CONFIG.raw["figures"]["gradcam"]["alpha"]
    return settings
