"""The workflow's steps as plain functions, and the one place that turns their errors into a clean exit.

Snakemake jobs (``rules/scripts/*.py``) and the ``convscope`` command both call these
functions; ``guarded`` gives both the same behaviour on bad input: a one-line error
naming the culprit and the fix, exit status 1, and no half-written output.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from pathlib import Path
from typing import Callable, Iterable, TextIO

from convscope.config import DatasetConfig, ModelConfig, RuntimeConfig
from convscope.data import prepare_dataset
from convscope.io import write_json_atomic
from convscope.errors import ReportError, UserError
from convscope.evaluation import evaluate_model
from convscope.training import train_model


class _Tee:
    """Copies a text stream to a log file (print output reaches both the terminal and the log)."""

    def __init__(self, stream: TextIO, log: TextIO) -> None:
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        self.log.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.log.flush()
        self.stream.flush()


def _remove(paths: Iterable[str | Path]) -> None:
    for path in map(Path, paths):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def guarded(step: Callable[[], object], outputs: Iterable[str | Path] = (), log: str | Path | None = None) -> int:
    """Runs one step; a user error becomes one line on stderr (and in the log), exit status 1, outputs removed.

    Returns:
        0 on success, 1 on a user error. Bugs (any other exception) propagate with their traceback.
    """
    outputs = list(outputs)
    with contextlib.ExitStack() as stack:
        if log is not None:
            Path(log).parent.mkdir(parents=True, exist_ok=True)
            log_file = stack.enter_context(open(log, "w"))
            stack.enter_context(contextlib.redirect_stdout(_Tee(sys.stdout, log_file)))
        try:
            step()
        except UserError as error:
            _remove(outputs)
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            print(f"convscope: error: {message}", file=sys.stderr)
            if log is not None:
                print(f"error: {message}", file=log_file)
            return 1
    return 0


def prepare_data(dataset: DatasetConfig, index_path: str | Path) -> None:
    """Generates or indexes the dataset into the folder of ``index_path``."""
    index = prepare_dataset(dataset, Path(index_path).parent)
    print(f"{dataset.kind}: {len(index.classes)} classes, " + ", ".join(f"{k} {v}" for k, v in index.counts().items()))


def train(model: ModelConfig, runtime: RuntimeConfig, index_path: str | Path, checkpoint_path: str | Path,
          history_path: str | Path, threads: int | None = None) -> None:
    """Trains one model and writes its checkpoint and its per-epoch history."""
    checkpoint = train_model(model, index_path, checkpoint_path, device=runtime.device, threads=threads,
                             eval_batch_size=runtime.eval_batch_size)
    write_json_atomic(Path(history_path), checkpoint["history"])


def evaluate(runtime: RuntimeConfig, index_path: str | Path, checkpoint_path: str | Path, metrics_path: str | Path,
             predictions_path: str | Path, timings_path: str | Path, threads: int | None = None) -> None:
    """Evaluates one checkpoint on val and test."""
    evaluate_model(checkpoint_path, index_path, metrics_path, predictions_path, timings_path, device=runtime.device,
                   threads=threads, batch_size=runtime.eval_batch_size)


def render_figures(family: str, inputs: dict[str, str], out_dir: str | Path, settings: dict) -> None:
    """Draws one figure family for one model into ``out_dir``.

    Args:
        family: architecture, filters, feature_maps, training, gradcam or failures.
        inputs: paths by role: checkpoint, index, and metrics or predictions where the family reads them.
        out_dir: the family's folder, e.g. figures/resnet18/gradcam.
        settings: the family's settings from the config (see schema.yaml, figures).
    """
    from convscope.figures import architecture, failures, features, filters, gradcam, training

    checkpoint, index = inputs["checkpoint"], inputs["index"]
    if family == "architecture":
        written = architecture.render_architecture(checkpoint, index, out_dir)
    elif family == "filters":
        written = filters.render_filters(checkpoint, index, out_dir, **settings)
    elif family == "feature_maps":
        written = features.render_feature_maps(checkpoint, index, out_dir, **settings)
    elif family == "training":
        written = training.render_training(checkpoint, inputs["metrics"], out_dir)
    elif family == "gradcam":
        written = gradcam.render_gradcam(checkpoint, index, out_dir, predictions_path=inputs["predictions"], **settings)
    elif family == "failures":
        written = failures.render_failures(checkpoint, index, inputs["predictions"], out_dir, **settings)
    else:
        raise ValueError(f"unknown figure family {family!r}")
    print(f"{family}: wrote {len(written)} files to {out_dir}")


def explain(checkpoint_path: str | Path, index_path: str | Path, out_dir: str | Path, json_path: str | Path,
            settings: dict) -> None:
    """Measures how far one model's CAMs can be trusted: localisation, faithfulness, sanity check."""
    from convscope.figures.explanations import render_explanations

    written = render_explanations(checkpoint_path, index_path, out_dir, json_path, **settings)
    print(f"explanations: wrote {len(written)} files to {out_dir} and {json_path}")


def write_report_sources(model_names: list[str], config: dict, index_path: str | Path, generated_dir: str | Path,
                         variables_path: str | Path, source_dir: str | Path, benchmarks: list[str]) -> None:
    """Writes the report's generated sections and variables from the built artifacts (see ``report.sources``)."""
    from convscope.report.sources import write_sources

    write_sources(model_names, config, index_path, generated_dir, variables_path, source_dir, benchmarks)
    print(f"report sources: {len(model_names)} model section(s) in {generated_dir}")


def render_report(project_dir: str | Path, html_path: str | Path, pdf_path: str | Path) -> None:
    """Renders the Quarto project to HTML and PDF (Quarto when installed, else pandoc and Typst)."""
    from convscope.report.render import render_report as render

    written = render(project_dir)
    for expected in (html_path, pdf_path):
        if not Path(expected).is_file():
            raise ReportError(f"rendering wrote {', '.join(map(str, written.values()))} but not {expected}")
    print(f"report: {html_path}, {pdf_path}")
