"""Architecture: the printed module tree and a per-stage table (output shape, parameters, kernels, strides)."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from pathlib import Path

import torchinfo
from torch import nn

from convscope.evaluation import load_model
from convscope.figures.drawing import model_label, pair
from convscope.io import write_text_atomic
from convscope.models import stages

COLUMNS = ("layer", "output_shape", "parameters", "details")


_WINDOWED = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


def _details(module: nn.Module) -> str:
    if type(module) is nn.Sequential:  # subclasses (Conv2dNormActivation) are one layer, not a stack of blocks
        parts = [f"{len(module)} blocks ({', '.join(dict.fromkeys(type(child).__name__ for child in module))})"]
    else:
        parts = [type(module).__name__]
    # A block reports the kernels of its convs and the largest stride among them (branches run in parallel).
    windows = [module] if isinstance(module, _WINDOWED) else [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if windows:
        parts.append("kernel " + ", ".join(dict.fromkeys(pair(m.kernel_size) for m in windows)))
        parts.append(f"stride {max(max(m.stride) if isinstance(m.stride, tuple) else m.stride for m in windows)}")
    if isinstance(module, nn.Linear):
        parts.append(f"{module.in_features}→{module.out_features} features")
    return "; ".join(parts)


def stage_table(model: nn.Module, input_size: int) -> list[dict[str, object]]:
    """One row per stage (see ``figures.stages``) at a 1×3×``input_size``² input, measured by torchinfo."""
    summary = torchinfo.summary(
        model,
        input_size=(1, 3, input_size, input_size),
        depth=2,
        col_names=("output_size", "num_params", "kernel_size"),
        verbose=0,
        device="cpu",
    )
    infos = {}
    for info in summary.summary_list:
        infos.setdefault(info.layer_id, info)  # a module called twice: keep its first call
    rows = []
    for name, module in stages(model).items():
        info = infos.get(id(module))
        shape = "×".join(map(str, info.output_size[1:])) if info is not None and info.output_size else "not called"
        rows.append(
            {
                "layer": name,
                "output_shape": shape,
                "parameters": sum(p.numel() for p in module.parameters()) if info is None else info.num_params,
                "details": _details(module),
            }
        )
    return rows


def render_architecture(checkpoint_path: str | Path, index_path: str | Path, out_dir: str | Path) -> list[Path]:
    """Writes ``architecture.txt`` (``print(model)``) and the per-stage table ``stages.md`` / ``stages.csv``.

    Args:
        checkpoint_path: a convscope checkpoint.
        index_path: the dataset index; unused here, accepted so every family is called alike.
        out_dir: folder for the files (created).

    Returns:
        The files written.
    """
    _, config, model = load_model(checkpoint_path)
    out_dir = Path(out_dir)
    rows = stage_table(model, config.input_size)

    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)

    total = sum(p.numel() for p in model.parameters())
    s = config.input_size
    markdown = [
        f"# {model_label(config)}: stages at a 3×{s}×{s} input",
        "",
        f"{total:,} parameters in all. Output shape is C×H×W (features for a linear layer); parameters include "
        "every submodule of the stage; a block's stride is the largest stride inside it.",
        "",
        "| layer | output shape | parameters | details |",
        "| --- | --- | ---: | --- |",
        *(f"| {r['layer']} | {r['output_shape']} | {r['parameters']:,} | {r['details']} |" for r in rows),
    ]
    return [
        write_text_atomic(out_dir / "architecture.txt", f"{model}\n"),
        write_text_atomic(out_dir / "stages.md", "\n".join(markdown) + "\n"),
        write_text_atomic(out_dir / "stages.csv", table.getvalue()),
    ]


def render(inputs: Mapping[str, str], out_dir: Path, settings: dict) -> list[Path]:
    """The family's entry point (see ``convscope.figures``)."""
    return render_architecture(inputs["checkpoint"], inputs["index"], out_dir, **settings)
