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
    return expand([paths.METRICS, paths.PREDICTIONS], model=CONFIG.model_names)
