"""The ``convscope`` command: run one step of the workflow by hand, on a config file.

``snakemake --cores all`` runs every step in order; this command runs one of them, e.g.
``convscope train --config config/config.yaml --model resnet18``, writing the same files.
"""

from __future__ import annotations

import argparse
import sys

from convscope import jobs, paths
from convscope.config import read_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convscope", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/config.yaml", help="YAML config (default: %(default)s)")
    steps = parser.add_subparsers(dest="step", required=True)
    steps.add_parser("check-config", help="validate the config and print the resolved model names")
    steps.add_parser("prepare-data", help="generate or index the dataset")
    for name in ("train", "evaluate"):
        step = steps.add_parser(name, help=f"{name} one model")
        step.add_argument("--model", required=True, help="a model name from the config")
        step.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``convscope`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    outputs: list[str] = []

    def step() -> None:
        config = read_config(args.config)
        index = paths.DATA_INDEX.format(dataset=config.dataset.folder_name)
        if args.step == "check-config":
            from convscope import preflight

            preflight.check(config)
            print(f"config {args.config} is valid; models: {', '.join(config.model_names)}")
        elif args.step == "prepare-data":
            from convscope.data import prepare

            prepare(config.dataset, index)
        else:
            model = config.model(args.model)
            files = {
                key: getattr(paths, key).format(model=model.name)
                for key in ("CHECKPOINT", "HISTORY", "METRICS", "PREDICTIONS", "TIMINGS")
            }
            if args.step == "train":
                outputs.extend([files["CHECKPOINT"], files["HISTORY"]])
                from convscope.training import train

                train(model, config.runtime, index, files["CHECKPOINT"], files["HISTORY"], args.threads)
            else:
                outputs.extend([files["METRICS"], files["PREDICTIONS"], files["TIMINGS"]])
                from convscope.evaluation import evaluate_model

                evaluate_model(
                    files["CHECKPOINT"],
                    index,
                    files["METRICS"],
                    files["PREDICTIONS"],
                    files["TIMINGS"],
                    config.runtime,
                    args.threads,
                )

    return jobs.guarded(step, outputs)


if __name__ == "__main__":
    sys.exit(main())
