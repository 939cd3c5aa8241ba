"""The generated parts of the report, written from the build's artifacts.

``write_sources`` reads what the workflow built (checkpoints, metrics, figures, explanations, benchmarks) and
writes Quarto Markdown into ``report/_generated/`` (``comparison.qmd``, ``models.qmd``, ``appendix.qmd`` and
copies of the figures they show) plus ``report/_variables.yml``; the hand-written ``report/report.qmd``
includes those files and quotes the variables. Every string that comes from data (class names, config
values, paths) goes through ``md``, so ``*``, ``_``, ``#``, ``$``, ``@`` and ``<`` render
literally in HTML and PDF.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import yaml
from PIL import Image

from convscope import paths
from convscope.contracts import Agreement, Checkpoint, Explanations, Failures, Metrics
from convscope.errors import ReportError
from convscope.figures import FAMILIES, Family
from convscope.io import read_artifact
from convscope.methods import METHOD_NAMES

# The PDF's text block is about 6.5 × 9 in; a figure taller than 80% of it would be pushed or cut, so tall
# figures get a width that keeps their height inside that.
TEXT_ASPECT = 9.0 / 6.5
MAX_HEIGHT_SHARE = 0.8
PACKAGES = (
    "convscope",
    "torch",
    "torchvision",
    "numpy",
    "pillow",
    "matplotlib",
    "pandas",
    "snakemake",
    "torchinfo",
    "pypandoc-binary",
    "typst",
)
FEATURE_MAP_FIGURES = 2  # per model in the body; the rest stay in figures/{model}/feature_maps/
MAX_LISTED_CLASSES = 30
MAX_INLINE_SKIPPED = 5  # skipped files named in the dataset section; more go to the appendix
GENERATED = ("comparison.qmd", "dataset.qmd", "models.qmd", "agreement.qmd", "appendix.qmd")  # from templates/<name>.j2
SATURATED_INSERTION = 0.9  # random-map insertion AUC above which the insertion metric says nothing
# Families with a block of their own in templates/models.qmd.j2; any other family gets templates/family.qmd.j2.
HAND_WRITTEN = frozenset(
    {"architecture", "filters", "feature_maps", "training", "gradcam", "failures", "explanation_quality"}
)


MD_PUNCTUATION = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


def md(text: str) -> str:
    """Escape a plain string so that it renders literally in the report's Markdown.

    Every ASCII punctuation character is backslash-escaped (pandoc Markdown accepts an escape before any of them),
    which covers emphasis, code, headings, table cells (``|``), citations (``@``), raw HTML (``<``), math (``$``),
    smart punctuation and shortcodes (``{``). Line breaks become spaces. The result is safe in a paragraph, a
    heading, a caption, a table cell and a ``_variables.yml`` value (as a plain or single-quoted YAML scalar).

    Args:
        text: Any string, e.g. a class name such as ``"a*b_c#d$e@f<g|h"``.

    Returns:
        The Markdown source that renders as ``text``.
    """
    text = " ".join(str(text).splitlines())
    return "".join("\\" + ch if ch in MD_PUNCTUATION else ch for ch in text)


@dataclass
class ModelArtifacts:
    """What the report reads of one trained model."""

    name: str
    checkpoint: Checkpoint
    sha256: str
    parameters: int
    metrics: Metrics
    figures: Path  # figures/{model}
    explanations: Explanations

    @property
    def config(self) -> dict[str, Any]:
        return self.checkpoint["config"]

    @property
    def slug(self) -> str:
        """The model name as it appears in figure and table ids."""
        return slug(self.name)

    @property
    def label(self) -> str:
        arch = self.config["arch"]
        return md(self.name if self.name == arch else f"{self.name} ({arch})")

    @property
    def train_seconds(self) -> float:
        return sum(epoch["seconds"] for epoch in self.checkpoint["history"])


def slug(name: str) -> str:
    """A name as it may appear in figure and table ids (Quarto ids: letters, digits and dashes)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_model_artifacts(name: str, workdir: Path) -> ModelArtifacts:
    """Reads one model's checkpoint, metrics and explanations from their places in ``workdir``."""
    from convscope.models import model_from_checkpoint
    from convscope.training import load_checkpoint

    checkpoint_path = workdir / paths.CHECKPOINT.format(model=name)
    checkpoint = load_checkpoint(checkpoint_path)
    parameters = sum(p.numel() for p in model_from_checkpoint(checkpoint).parameters())
    metrics = read_artifact(workdir / paths.METRICS.format(model=name), "evaluate")
    explanations = read_artifact(workdir / paths.EXPLANATIONS.format(model=name), "explain")
    return ModelArtifacts(
        name,
        checkpoint,
        sha256(checkpoint_path),
        parameters,
        metrics,
        workdir / paths.FIGURE_DIR.format(model=name, family="").rstrip("/"),
        explanations,
    )


def code(text: str) -> str:
    """Inline code: taken literally by Markdown, so it must not be escaped (a backtick cannot occur in it)."""
    return "`" + str(text).replace("`", "'") + "`"


def plural(count: int, word: str, words: str | None = None) -> str:
    """``"1 model"``, ``"2 models"``: the count with the word in the number it calls for."""
    return f"{count:,} {word if count == 1 else words or word + 's'}"


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def table(header: Sequence[str], rows: Iterable[Sequence[object]], caption: str, label: str, align: str = "") -> str:
    """A pipe table with a Quarto caption and id; cells are used as given (escape data before).

    A wide table gets column widths in proportion to the dashes under its header (pandoc's rule), so each column
    gets dashes for its longest word (which cannot wrap) or half its longest cell, plus room for the cell padding:
    a long model name is not squeezed into a narrow column, nor a header word into its neighbour.
    """
    align = align or "l" * len(header)
    body = [[str(cell) for cell in row] for row in rows]
    widths = [
        max(max(len(word) for cell in column for word in cell.split() or [""]), max(map(len, column)) // 2) + 3
        for column in zip(header, *body)
    ]
    rule = ["-" * (w - 1) + (":" if a == "r" else "-") for a, w in zip(align, widths)]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + f"\n\n: {caption} {{#tbl-{label}}}\n"


class FigureCopier:
    """Copies the figures a section shows into the generated folder and writes their Markdown.

    The Quarto project then holds everything it shows (Typst reads files only below its root, and a copied
    report folder still renders), and each figure gets a width that keeps tall figures inside a PDF page.

    Args:
        out_dir: Where the files are written now (a temporary folder).
        final_name: The folder's name inside the project once moved there (``_generated``); figure paths in
            the Markdown are relative to the project, where ``report.qmd`` lives.
    """

    def __init__(self, out_dir: Path, final_name: str) -> None:
        self.out_dir, self.final_name = out_dir, final_name

    def __call__(self, model: ModelArtifacts, name: str | Path, label: str, caption: str) -> str:
        """The Markdown of the figure ``name`` (relative to the model's figures folder), or a note when missing."""
        source = model.figures / name
        if not source.is_file():
            return f"*No {md(source.name)} was drawn for this model.*\n"
        return self.copy(source, Path("figures", model.name, source.parent.name), f"{model.slug}-{label}", caption)

    def copy(self, source: Path, folder: Path, label: str, caption: str) -> str:
        """The Markdown of the figure ``source`` (copied to ``folder`` of the generated folder, ``#fig-<label>``),
        or a note when missing."""
        if not source.is_file():
            return f"*No {md(source.name)} was drawn.*\n"
        relative = folder / source.name
        (self.out_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, self.out_dir / relative)
        with Image.open(source) as image:
            aspect = image.height / image.width
        width = min(100, round(100 * MAX_HEIGHT_SHARE * TEXT_ASPECT / aspect))
        return f"![{caption}]({self.final_name}/{relative.as_posix()}){{#fig-{label} width={width}%}}\n"


def templates(folder: Path, figure: FigureCopier) -> jinja2.Environment:
    """The report's templates, with filters that escape data (``md``), quote code and count (``plural``)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(folder),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(md=md, code=code, percent=percent, duration=duration, plural=plural, score=score)
    env.globals.update(table=table, figure=figure, method_names=METHOD_NAMES)
    return env


# Data assembly, one function per figure family (plus the dataset and the explanations): each returns what its
# part of the templates in report/templates/ shows; the words are in the templates.


def comparison_rows(models: Sequence[ModelArtifacts]) -> list[list[object]]:
    """The cross-model table: size, input, training budget and accuracy, one row per model."""
    rows = []
    for m in models:
        val, test = m.metrics["splits"]["val"], m.metrics["splits"]["test"]
        rows.append(
            [
                m.label,
                md(weights_label(m.config["weights"])),
                f"{m.parameters / 1e6:.2f} M",
                f"{m.config['input_size']} px",
                m.config["epochs"],
                percent(val["top1"]),
                percent(val["top5"]),
                percent(test["top1"]),
                percent(test["top5"]),
                score(test["calibration"]["ece"]),
                duration(m.train_seconds),
            ]
        )
    return rows


def weights_label(weights: str | None) -> str:
    if weights is None:
        return "random init"
    return "ImageNet" if weights == "imagenet" else Path(weights).name


def split_sizes(index: dict[str, Any]) -> dict[str, int]:
    """Images per split of a dataset index."""
    return {split: len(labels) for split, labels in index["labels"].items()}


def dataset_data(index: dict[str, Any], dataset: dict[str, Any]) -> dict[str, Any]:
    """Classes, split sizes, skipped files and the built-in shortcut of the dataset every model saw."""
    classes = index["classes"]
    skipped = list(index.get("skipped", []))
    return {
        "index": index,
        "dataset": dataset,
        "classes": classes[:MAX_LISTED_CLASSES],
        "more_classes": max(0, len(classes) - MAX_LISTED_CLASSES),
        "counts": split_sizes(index),
        "skipped": skipped,
        "skipped_inline": len(skipped) <= MAX_INLINE_SKIPPED,
    }


def training_data(m: ModelArtifacts) -> dict[str, Any]:
    """The training setup table and the number of epochs run."""
    config, pre = m.config, m.config["preprocessing"]
    size = config["input_size"]
    resize = f"shorter side to {pre['resize']} px" if pre["resize"] else f"to {size} px"
    crop = "random" if pre["crop"] == "random" else "centre"
    setup = [
        ["architecture", f"torchvision {code(config['arch'])}"],
        ["initial weights", md(weights_label(config["weights"]))],
        ["input", f"3×{size}×{size}"],
        [
            "preprocessing",
            f"resize {resize}; {crop} crop to {size} px in training, centre crop in evaluation"
            + ("; random horizontal flips in training" if pre["hflip"] else "")
            + ("; grayscale, replicated to 3 channels" if pre["grayscale"] else ""),
        ],
        [
            "normalisation",
            f"mean ({', '.join(f'{v:.3f}' for v in pre['mean'])}), std ({', '.join(f'{v:.3f}' for v in pre['std'])})",
        ],
        [
            "optimiser",
            f"{config['optimizer']}, lr {config['lr']:g}"
            + (f", head lr {config['head_lr']:g}" if config["head_lr"] else "")
            + f", weight decay {config['weight_decay']:g}, {config['lr_schedule']} schedule",
        ],
        [
            "training",
            f"{plural(config['epochs'], 'epoch')}, batch size {config['batch_size']}, seed {config['seed']}"
            + ("; backbone frozen (head only)" if config["freeze"] == "backbone" else "")
            + (f"; label smoothing {config['label_smoothing']:g}" if config["label_smoothing"] else ""),
        ],
    ]
    run = m.checkpoint.get("runtime")  # what runtime.precision/workers: auto decided (absent in older checkpoints)
    if run:
        autocast = "fp32" if run["precision"] == "fp32" else f"{run['precision']} autocast"
        memory = ", channels_last" if run["channels_last"] else ""
        setup.append(["hardware", f"{run['device']}, {autocast}{memory}, {plural(run['workers'], 'loader worker')}"])
    val, test = m.metrics["splits"]["val"], m.metrics["splits"]["test"]
    metrics = [
        [split, f"{r['n']:,}", percent(r["top1"]), percent(r["top5"])]
        for split, r in (("validation", val), ("test", test))
    ]
    return {"setup": setup, "epochs": len(m.checkpoint["history"]), "metrics": metrics}


def architecture_data(m: ModelArtifacts) -> dict[str, Any]:
    """The per-stage table and the module tree."""
    with open(m.figures / "architecture/stages.csv", newline="") as f:
        stages = [
            [code(r["layer"]), md(r["output_shape"]), f"{int(r['parameters']):,}", md(r["details"])]
            for r in csv.DictReader(f)
        ]
    return {"stages": stages, "tree": (m.figures / "architecture/architecture.txt").read_text().rstrip()}


def filters_data(m: ModelArtifacts) -> list[dict[str, Any]]:
    """The deeper filter grids (the first layer's has its own figure), with their layer names."""
    paths_ = sorted(p for p in (m.figures / "filters").glob("filters_*.png") if p.name != "filters_first.png")
    return [{"path": p.relative_to(m.figures), "layer": code(p.stem.removeprefix("filters_"))} for p in paths_]


def feature_maps_data(m: ModelArtifacts) -> dict[str, Any]:
    """The feature-map figures shown in the body, each with the test-split index its title names."""
    folder = m.figures / "feature_maps"
    maps = sorted(folder.glob("feature_maps_*.png"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    indices = [int(i) for i in read_artifact(folder / "feature_maps.npz", "figures")["indices"]]
    shown = [
        {"path": p.relative_to(m.figures), "image": indices[int(p.stem.rsplit("_", 1)[1])]}
        for p in maps[:FEATURE_MAP_FIGURES]
    ]
    return {"shown": shown, "more": len(maps) - len(shown), "folder": code(f"figures/{m.name}/feature_maps/")}


def failures_data(m: ModelArtifacts) -> dict[str, Any]:
    """The most confident misclassifications, their table and the CAM-in-object statistics."""
    summary: Failures = read_artifact(m.figures / "failures/failures.json", "figures")
    failures = summary["failures"]
    has_energy, has_texture = summary["energy_in_mask"] is not None, bool(failures) and "texture" in failures[0]
    header = ["test image", "true class", "predicted", "confidence"] + (["background"] if has_texture else [])
    header += ["CAM in object (pred.)", "CAM in object (true)"] if has_energy else []
    rows = []
    for r in failures:
        row = [r["index"], md(r["label_name"]), md(r["pred_name"]), percent(r["confidence"])]
        row += [md(r["texture"])] if has_texture else []
        row += [percent(r["energy_in_mask_pred"]), percent(r["energy_in_mask_true"])] if has_energy else []
        rows.append(row)
    return {
        "summary": summary,
        "count": len(failures),
        "layer": code(summary["layer"]),
        "header": header,
        "rows": rows,
        "align": "rllr" + "l" * (len(header) - 4),
        "has_energy": has_energy,
    }


def score(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def calibration_data(m: ModelArtifacts) -> dict[str, Any]:
    """The expected calibration error on validation and test, and the number of confidence bins."""
    val, test = m.metrics["splits"]["val"]["calibration"], m.metrics["splits"]["test"]["calibration"]
    return {"val": score(val["ece"]), "test": score(test["ece"]), "bins": len(test["bins"])}


def explanations_data(m: ModelArtifacts) -> dict[str, Any]:
    """Localisation, faithfulness and sanity check of each CAM method, beside their baselines."""
    report = m.explanations
    methods = list(report["methods"])
    names = [md(METHOD_NAMES.get(method, method)) for method in methods]
    first = report["methods"][methods[0]]
    out: dict[str, Any] = {
        "report": report,
        "layer": code(report["layer"]),
        "localisation": None,
        "skipped": md(first.get("localisation_skipped") or ""),
    }
    if first["localisation"] is not None:
        deepest = report["layers"][-1]
        baselines = first["localisation"][deepest]["baselines"]
        rows = []
        for name, groups in [
            *zip(names, (report["methods"][k]["localisation"][deepest] for k in methods)),
            ("*centre-peaked map*", baselines["centre"]),
            ("*random map*", baselines["random"]),
        ]:
            rows.append(
                [name]
                + [
                    score(groups[g][metric])
                    for metric in ("pointing_game", "energy")
                    for g in ("all", "correct", "misclassified")
                ]
            )
        out["localisation"] = {"rows": rows, "layer": code(deepest), "n": first["localisation"][deepest]["all"]["n"]}
    rows = []
    for name, method in zip(names, methods):
        faith, sanity = report["methods"][method]["faithfulness"], report["methods"][method]["sanity"]
        road = report["methods"][method]["road"]
        verdict = {True: "passes", False: "**fails**", None: "–"}[sanity["passes"]]
        rows.append(
            [
                name,
                score(faith["deletion_auc"]),
                score(faith["insertion_auc"]),
                score(road["morf"]),
                score(road["lerf"]),
                score(sanity["spearman"][-1]),
                score(sanity["ssim"][-1]),
                verdict,
            ]
        )
    faith = first["faithfulness"]
    rows.append(
        [
            "*random map*",
            score(faith["random_deletion_auc"]),
            score(faith["random_insertion_auc"]),
            score(first["road"]["random_morf"]),
            score(first["road"]["random_lerf"]),
            "–",
            "–",
            "–",
        ]
    )
    # A model that already recognises the blurred image leaves insertion nothing to tell apart.
    saturated = faith["random_insertion_auc"] is not None and faith["random_insertion_auc"] >= SATURATED_INSERTION
    out.update(faithfulness=rows, random_insertion=score(faith["random_insertion_auc"]) if saturated else None)
    return out


def family_data(m: ModelArtifacts, family: Family) -> dict[str, Any]:
    """A family's section without a hand-written block: its title and every PNG of its folder, in name order
    (numbers counted as numbers), each captioned with its file name."""
    figures = sorted(
        (m.figures / family.name).glob("*.png"),
        key=lambda p: [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", p.stem)],
    )
    return {
        "title": md(family.title),
        "slug": slug(family.name),
        "figures": [{"path": p.relative_to(m.figures), "caption": md(p.stem.replace("_", " "))} for p in figures],
    }


def other_families(m: ModelArtifacts) -> list[dict[str, Any]]:
    """The generic sections of the registered families that ``models.qmd.j2`` has no block for, in registry order."""
    return [family_data(m, family) for name, family in FAMILIES.items() if name not in HAND_WRITTEN]


def agreement_data(workdir: Path, figure: FigureCopier) -> dict[str, Any]:
    """The cross-model section: each pair's agreement, the means and the side-by-side figure, or why it is skipped."""
    path = workdir / paths.AGREEMENT
    if not path.is_file():
        return {"skipped": f"no {code(paths.AGREEMENT)} was built"}
    report: Agreement = read_artifact(path, "compare_models")
    if report["skipped"]:
        return {"skipped": md(report["skipped"])}
    rows = [
        [
            " and ".join(md(name) for name in pair["models"]),
            pair["n"],
            score(pair["mean_spearman"]),
            percent(pair["pointing_agreement"]),
        ]
        for pair in report["pairs"]
    ]
    if len(rows) > 1:
        n = sum(pair["n"] for pair in report["pairs"])
        rows.append(["*all pairs*", n, score(report["mean_spearman"]), percent(report["pointing_agreement"])])
    source = workdir / paths.COMPARISON_FIGURES / "agreement.png"
    caption = "Each model's heatmap of the same test images at its deepest layer (rows: images; columns: models)"
    return {
        "skipped": None,
        "report": report,
        "method": md(METHOD_NAMES.get(report["method"], report["method"])),
        "layers": ", ".join(f"{md(name)} at {code(layer)}" for name, layer in report["layers"].items()),
        "images": len(report["sample_indices"]),
        "undefined": sum(pair["undefined"] for pair in report["pairs"]),
        "rows": rows,
        "figure": figure.copy(source, Path("figures", "comparison"), "agreement", caption),
    }


def model_data(m: ModelArtifacts) -> dict[str, Any]:
    """Everything one model's section shows, per family."""
    return {
        "m": m,
        "s": m.slug,
        "training": training_data(m),
        "architecture": architecture_data(m),
        "filters": filters_data(m),
        "feature_maps": feature_maps_data(m),
        "failures": failures_data(m),
        "calibration": calibration_data(m),
        "explanations": explanations_data(m),
        "other_families": other_families(m),
    }


def git_state(source_dir: Path) -> str:
    """The commit of the workflow's source and whether its tree had uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(source_dir), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(source_dir), "status", "--porcelain"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    return code(commit) + (" (with uncommitted changes)" if dirty else " (clean tree)")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = ", GPU " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else ", no GPU"
    return f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} logical CPUs{gpu}"


def rule_times(benchmarks: Iterable[Path], root: Path) -> list[list[str]]:
    """Rows of (rule, job, wall time, peak memory) from Snakemake's benchmark files under ``root``."""
    rows = []
    for path in sorted(p for p in benchmarks if p.is_file()):
        with open(path, newline="") as f:
            record = next(csv.DictReader(f, delimiter="\t"))
        parts = path.relative_to(root).with_suffix("").parts
        rss = record.get("max_rss", "NA")
        rows.append(
            [
                md(parts[0]),
                md("/".join(parts[1:])) or "–",
                duration(float(record["s"])),
                f"{float(rss):,.0f} MB" if rss not in ("NA", "-") else "–",
            ]
        )
    return rows


def appendix_data(
    models: Sequence[ModelArtifacts],
    config: dict[str, Any],
    source_dir: Path,
    benchmarks: Sequence[Path],
    benchmark_root: Path,
) -> dict[str, Any]:
    """Reproducibility: code version, software, machine, checksums, job times and the resolved config."""
    return {
        "git": git_state(source_dir),
        "python": platform.python_version(),
        "machine": md(machine()),
        "packages": [[md(p), md(_version(p))] for p in PACKAGES],
        "checksums": [[m.label, code(paths.CHECKPOINT.format(model=m.name)), code(m.sha256)] for m in models],
        "rule_times": rule_times(benchmarks, benchmark_root),
        "config": yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=100).rstrip(),
    }


def variables(models: Sequence[ModelArtifacts], index: dict[str, Any], dataset: dict[str, Any]) -> dict[str, Any]:
    """The numbers the hand-written prose quotes with ``{{< var … >}}``, as escaped Markdown strings."""
    best = max(models, key=lambda m: (m.metrics["splits"]["test"]["top1"], m.name))
    counts = split_sizes(index)
    name = dataset.get("name") or {"shapes": "the embedded shapes set", "cifar10": "CIFAR-10"}.get(
        index["kind"], Path(str(dataset.get("root"))).name
    )
    return {
        "dataset": {
            "name": md(name),
            "classes": len(index["classes"]),
            **{split: f"{n:,}" for split, n in counts.items()},
        },
        "models": {
            "count": len(models),
            "counted": plural(len(models), "model"),
            "names": ", ".join(m.label for m in models),
        },
        "best": {
            "name": best.label,
            "test_top1": percent(best.metrics["splits"]["test"]["top1"]),
            "test_top5": percent(best.metrics["splits"]["test"]["top5"]),
            "val_top1": percent(best.metrics["splits"]["val"]["top1"]),
        },
    }


def write_sources(
    model_names: Sequence[str],
    config: dict[str, Any],
    index_path: str | Path,
    out_dir: str | Path,
    variables_path: str | Path,
    source_dir: str | Path,
    benchmarks: Sequence[str | Path] = (),
    workdir: str | Path = ".",
    templates_dir: str | Path | None = None,
) -> None:
    """Writes the report's generated Markdown, figure copies and variables from the build's artifacts.

    Args:
        model_names: Models in config order.
        config: The resolved configuration (printed in the appendix).
        index_path: The dataset's ``index.json``.
        out_dir: The generated folder of the Quarto project (``report/_generated``), replaced as a whole.
        variables_path: The project's ``_variables.yml``.
        source_dir: The workflow's source folder, whose git commit the appendix records.
        benchmarks: Snakemake benchmark files (``benchmarks/results/<rule>/…tsv``) for the rule-time table;
            missing ones are left out.
        workdir: The folder the artifacts' relative paths start from.
        templates_dir: The Jinja2 templates of the generated files; by default ``templates/`` beside ``out_dir``.
    """
    workdir, out_dir = Path(workdir), Path(out_dir)
    templates_dir = Path(templates_dir) if templates_dir else out_dir.parent / "templates"
    index = json.loads(Path(index_path).read_text())
    models = [load_model_artifacts(name, workdir) for name in model_names]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and swapped in at the end: a failure leaves no half-generated folder.
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=".generated-"))
    try:
        figure = FigureCopier(tmp, out_dir.name)
        env = templates(templates_dir, figure)
        context = {
            "models": [model_data(m) for m in models],
            "agreement": agreement_data(workdir, figure),
            "comparison": comparison_rows(models),
            "data": dataset_data(index, config["dataset"]),
            "appendix": appendix_data(
                models, config, Path(source_dir), [Path(b) for b in benchmarks], workdir / paths.BENCHMARKS
            ),
        }
        for name in GENERATED:
            try:
                (tmp / name).write_text(env.get_template(f"{name}.j2").render(context))
            except jinja2.TemplateError as exc:  # an edited template: name it, and the line when Jinja knows it
                line = f":{exc.lineno}" if getattr(exc, "lineno", None) else ""
                raise ReportError(
                    f"{templates_dir / (getattr(exc, 'name', None) or name + '.j2')}{line}: "
                    f"{' '.join(str(exc.message).split())}; fix the template"
                ) from exc
        values = yaml.safe_dump(variables(models, index, config["dataset"]), sort_keys=False, allow_unicode=True)
        Path(variables_path).write_text(values)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
