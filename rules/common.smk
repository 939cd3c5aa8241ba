# Helper functions of the workflow: config lookups, paths, the code each job runs.
# The config is validated (defaults filled in) before any rule is defined, so a bad
# value stops the run with one line naming the key, before any job starts.
import dataclasses
import sys
from pathlib import Path

import snakemake.io

from convscope import codedeps, paths
from convscope.config import load_config
from convscope.errors import ConfigError
from convscope.figures import FAMILIES

try:
    CONFIG = load_config(config)
except ConfigError as error:
    sys.exit(f"convscope: error: {error}")

DATA_INDEX = paths.DATA_INDEX.format(dataset=CONFIG.dataset.folder_name)
FIGURE_FAMILIES = list(FAMILIES)
SCRIPTS = Path(workflow.basedir) / "rules" / "scripts"
# What the package loads by name (importlib), invisible to the import scan: the configured dataset's reader.
LOADED_BY_NAME = {"convscope.data": [f"convscope.data.{CONFIG.dataset.kind}"]}


# The fingerprint of the code each job kind runs (its script's import closure, normalised), one per figure
# family: a param, so editing any module a job imports reruns it, and editing comments, docstrings or layout does
# not. Each file's parse is kept in .snakemake/ while the file is unchanged, so a no-op run parses nothing.
with codedeps.scan_cache(Path(".snakemake") / "convscope-code-scans.json"):
    CODE = {
        script.stem: codedeps.fingerprint(script, LOADED_BY_NAME)
        for script in sorted(SCRIPTS.glob("*.py"))
        if script.stem != "figures"  # one per family, below
    }
    FIGURE_CODE = {
        name: codedeps.fingerprint(
            SCRIPTS / "figures.py",
            LOADED_BY_NAME | {"convscope.figures": [family.module_name]},
        )
        for name, family in FAMILIES.items()
    }


def code(job):
    return CODE[job]


def figure_code(wildcards):
    return FIGURE_CODE[wildcards.family]


def dataset_params():
    return dataclasses.asdict(CONFIG.dataset)


def model_params(wildcards):
    """The resolved config of one model: changing it reruns only that model's jobs."""
    return dataclasses.asdict(CONFIG.model(wildcards.model))


def runtime_params():
    return dataclasses.asdict(CONFIG.runtime)


def gpus():
    return 1 if CONFIG.runtime.device == "cuda" else 0


def every_output():
    """Every file and folder the rules write, for every model and figure family: the default target's inputs.

    Snakemake looks for missing outputs only among the target's inputs (and the inputs of jobs that run anyway):
    a deleted figure folder whose report is up to date would stay missing. Named here, it is rebuilt, with what
    depends on it.
    """
    outputs = []
    for step in workflow.rules:
        for pattern in step.output:
            plain = snakemake.io.strip_wildcard_constraints(pattern)
            outputs += expand(plain, model=CONFIG.model_names, family=FIGURE_FAMILIES)
    return list(dict.fromkeys(outputs))


def check_with_torch():
    """The config checks that need torch (input sizes, device), before the first job; one line when one fails."""
    from convscope import preflight

    try:
        # A cluster's submit host need not have the nodes' GPUs: there, the jobs check the device.
        preflight.check(CONFIG, device=workflow.local_exec)
    except ConfigError as error:
        sys.exit(f"convscope: error: {error}")


def figure_settings(wildcards):
    """One family's settings for one model: changing another family's settings reruns nothing here."""
    return FAMILIES[wildcards.family].settings(CONFIG.figures, wildcards.model)


def figure_inputs(wildcards):
    """What one figure family reads: the checkpoint and the dataset index, plus what its entry names."""
    artifacts = {
        "history": paths.HISTORY,
        "metrics": paths.METRICS,
        "predictions": paths.PREDICTIONS,
        "explanations": paths.EXPLANATIONS,
        "explanation_arrays": paths.EXPLANATION_ARRAYS,
    }
    inputs = {
        "index": DATA_INDEX,
        "checkpoint": paths.CHECKPOINT.format(model=wildcards.model),
    }
    for name in FAMILIES[wildcards.family].reads:
        inputs[name] = artifacts[name].format(model=wildcards.model)
    return inputs


def report_source_inputs(wildcards):
    """Everything the generated report sections read, per model."""
    models = CONFIG.model_names
    return {
        "index": DATA_INDEX,
        "checkpoints": expand(paths.CHECKPOINT, model=models),
        "metrics": expand(paths.METRICS, model=models),
        "figures": expand(paths.FIGURE_DIR, model=models, family=FIGURE_FAMILIES),
        "explanations": expand(paths.EXPLANATIONS, model=models),
        "agreement": paths.AGREEMENT,
        "comparison_figures": paths.COMPARISON_FIGURES,
    }


def report_benchmarks():
    """Benchmark files of the jobs before the report, for its rule-time table.

    A parameter, not an input: a deleted benchmark file must not rebuild the models, it only drops a table row.
    """
    models = CONFIG.model_names
    return (
        [f"{paths.BENCHMARKS}/prepare_data.tsv"]
        + expand(
            f"{paths.BENCHMARKS}/{{step}}/{{model}}.tsv",
            step=["train", "evaluate"],
            model=models,
        )
        + expand(
            f"{paths.BENCHMARKS}/figures/{{model}}/{{family}}.tsv",
            model=models,
            family=FIGURE_FAMILIES,
        )
        + expand(f"{paths.BENCHMARKS}/explain/{{model}}.tsv", model=models)
        + [f"{paths.BENCHMARKS}/compare_models.tsv"]
    )


def explanation_settings(wildcards):
    """The explanation-quality settings of one model (see schema.yaml, explanations)."""
    settings = dataclasses.asdict(CONFIG.explanations)
    settings["methods"] = list(settings["methods"])
    layers = settings["layers"].get(wildcards.model)
    settings["layers"] = None if layers is None else list(layers)
    settings["batch_size"] = CONFIG.runtime.eval_batch_size
    settings["precision"] = CONFIG.runtime.precision
    return settings


def comparison_settings():
    """What the cross-model comparison reads of the config: each model's deepest Grad-CAM layer (None: the
    architecture's default) and the Grad-CAM figures' image count, method and colours.
    """
    cam = CONFIG.figures.gradcam
    return {
        "layers": {
            name: cam.layers[name][-1] if cam.layers.get(name) else None
            for name in CONFIG.model_names
        },
        "num_images": cam.num_images,
        "method": cam.method,
        "cmap": cam.cmap,
        "alpha": cam.alpha,
        "batch_size": CONFIG.runtime.eval_batch_size,
    }
