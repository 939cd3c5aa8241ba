"""The generated parts of the report, written from the build's artifacts.

``write_sources`` reads what the workflow built (checkpoints, metrics, figures, explanations, benchmarks) and
writes Quarto Markdown into ``report/_generated/`` (``comparison.qmd``, ``models.qmd``, ``appendix.qmd`` and
copies of the figures they show) plus ``report/_variables.yml``; the hand-written ``report/report.qmd``
includes those files and quotes the variables. Every string that comes from data (class names, config
values, paths) goes through ``escape_markdown``, so ``*``, ``_``, ``#``, ``$``, ``@`` and ``<`` render
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

import yaml
from PIL import Image

from convscope import paths
from convscope.contracts import Checkpoint, Explanations, Failures, Metrics
from convscope.cam import METHOD_NAMES
from convscope.report.render import escape_markdown as md

# The PDF's text block is about 6.5 × 9 in; a figure taller than 80% of it would be pushed or cut, so tall
# figures get a width that keeps their height inside that.
TEXT_ASPECT = 9.0 / 6.5
MAX_HEIGHT_SHARE = 0.8
PACKAGES = ("convscope", "torch", "torchvision", "numpy", "pillow", "matplotlib", "pandas", "snakemake", "torchinfo",
            "pypandoc-binary", "typst")
FEATURE_MAP_FIGURES = 2  # per model in the body; the rest stay in figures/{model}/feature_maps/
MAX_LISTED_CLASSES = 30
SATURATED_INSERTION = 0.9  # random-map insertion AUC above which the insertion metric says nothing


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
        """The model name as it appears in figure and table ids (Quarto ids: letters, digits and dashes)."""
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")

    @property
    def label(self) -> str:
        arch = self.config["arch"]
        return md(self.name if self.name == arch else f"{self.name} ({arch})")

    @property
    def train_seconds(self) -> float:
        return sum(epoch["seconds"] for epoch in self.checkpoint["history"])


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
    metrics = json.loads((workdir / paths.METRICS.format(model=name)).read_text())
    explanations = json.loads((workdir / paths.EXPLANATIONS.format(model=name)).read_text())
    return ModelArtifacts(name, checkpoint, sha256(checkpoint_path), parameters, metrics,
                          workdir / paths.FIGURE_DIR.format(model=name, family="").rstrip("/"), explanations)


def code(text: str) -> str:
    """Inline code: taken literally by Markdown, so it must not be escaped (a backtick cannot occur in it)."""
    return "`" + str(text).replace("`", "'") + "`"


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def table(header: Sequence[str], rows: Iterable[Sequence[object]], caption: str, label: str, align: str = "") -> str:
    """A pipe table with a Quarto caption and id; cells are used as given (escape data before)."""
    align = align or "l" * len(header)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
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

    def __call__(self, source: Path, model: ModelArtifacts, label: str, caption: str) -> str:
        relative = Path("figures", model.name, source.parent.name, source.name)
        (self.out_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, self.out_dir / relative)
        with Image.open(source) as image:
            aspect = image.height / image.width
        width = min(100, round(100 * MAX_HEIGHT_SHARE * TEXT_ASPECT / aspect))
        return f"![{caption}]({self.final_name}/{relative.as_posix()}){{#fig-{model.slug}-{label} width={width}%}}\n"


def comparison_section(models: Sequence[ModelArtifacts]) -> str:
    """The cross-model table: size, input, training budget and accuracy."""
    rows = []
    for m in models:
        val, test = m.metrics["splits"]["val"], m.metrics["splits"]["test"]
        rows.append([m.label, md(weights_label(m.config["weights"])), f"{m.parameters / 1e6:.2f} M",
                     f"{m.config['input_size']} px", m.config["epochs"], percent(val["top1"]), percent(val["top5"]),
                     percent(test["top1"]), percent(test["top5"]), duration(m.train_seconds)])
    header = ["model", "initial weights", "parameters", "input", "epochs", "val top-1", "val top-5", "test top-1",
              "test top-5", "training time"]
    return table(header, rows, "Models compared: size, input, training budget and accuracy", "comparison",
                 "lllrrrrrrr")


def weights_label(weights: str | None) -> str:
    if weights is None:
        return "random init"
    return "ImageNet" if weights == "imagenet" else Path(weights).name


def split_sizes(index: dict[str, Any]) -> dict[str, int]:
    """Images per split of a dataset index."""
    return {split: len(labels) for split, labels in index["labels"].items()}


def dataset_section(index: dict[str, Any], dataset: dict[str, Any]) -> str:
    """Classes and split sizes of the dataset every model saw."""
    classes = index["classes"]
    listed = ", ".join(md(c) for c in classes[:MAX_LISTED_CLASSES])
    if len(classes) > MAX_LISTED_CLASSES:
        listed += f", … ({len(classes) - MAX_LISTED_CLASSES} more)"
    counts = split_sizes(index)
    source = ("generated by convscope (the embedded *shapes* set, with object masks)" if index["kind"] == "shapes"
              else f"read from {code(dataset.get('root'))} ({md(index['kind'])})")
    text = [f"The dataset is {source}: {len(classes)} classes, "
            + ", ".join(f"{counts[s]:,} {s}" for s in ("train", "val", "test")) + " images.",
            "", f"Classes: {listed}.", ""]
    if index.get("skipped"):
        text += [f"{len(index['skipped'])} unreadable image file(s) were skipped when the dataset was indexed.", ""]
    if index["kind"] == "shapes" and dataset["shapes"].get("spurious_class"):
        shapes = dataset["shapes"]
        text += [f"In training, {percent(shapes['spurious_fraction'])} of the *{md(shapes['spurious_class'])}* images lie "
                 f"on a *{md(shapes['spurious_texture'])}* background that the other classes rarely get; in test every "
                 "class gets every texture equally often. A model that learned this shortcut mistakes other shapes on "
                 "that texture for it, which the failure analysis below looks for.", ""]
    return "\n".join(text)


def _setting_rows(config: dict[str, Any]) -> list[list[str]]:
    pre = config["preprocessing"]
    size = config["input_size"]
    resize = f"shorter side to {pre['resize']} px" if pre["resize"] else f"to {size} px"
    crop = "random" if pre["crop"] == "random" else "centre"
    return [
        ["architecture", f"torchvision {code(config['arch'])}"],
        ["initial weights", md(weights_label(config["weights"]))],
        ["input", f"3×{size}×{size}"],
        ["preprocessing", f"resize {resize}; {crop} crop to {size} px in training, centre crop in evaluation"
                          + ("; random horizontal flips in training" if pre["hflip"] else "")
                          + ("; grayscale, replicated to 3 channels" if pre["grayscale"] else "")],
        ["normalisation", f"mean ({', '.join(f'{v:.3f}' for v in pre['mean'])}), std ({', '.join(f'{v:.3f}' for v in pre['std'])})"],
        ["optimiser", f"{config['optimizer']}, lr {config['lr']:g}"
                      + (f", head lr {config['head_lr']:g}" if config["head_lr"] else "")
                      + f", weight decay {config['weight_decay']:g}, {config['lr_schedule']} schedule"],
        ["training", f"{config['epochs']} epochs, batch size {config['batch_size']}, seed {config['seed']}"
                     + ("; backbone frozen (head only)" if config["freeze"] == "backbone" else "")
                     + (f"; label smoothing {config['label_smoothing']:g}" if config["label_smoothing"] else "")],
    ]


def stage_rows(stages_csv: Path) -> list[list[str]]:
    with open(stages_csv, newline="") as f:
        return [[code(r["layer"]), md(r["output_shape"]), f"{int(r['parameters']):,}", md(r["details"])]
                for r in csv.DictReader(f)]


def _figure_or_note(figure: FigureCopier, path: Path, model: ModelArtifacts, label: str, caption: str) -> str:
    if path.is_file():
        return figure(path, model, label, caption)
    return f"*No {md(path.name)} was drawn for this model.*\n"


def model_section(m: ModelArtifacts, figure: FigureCopier) -> str:
    """One model's section: setup, curves, architecture, filters, feature maps, Grad-CAM, failures, metrics."""
    f, s = m.figures, m.slug
    val, test = m.metrics["splits"]["val"], m.metrics["splits"]["test"]
    out = [f"## {m.label}", ""]
    out += ["### Data, preprocessing and training", "",
            f"@tbl-{s}-setup lists how {m.label} was trained; @fig-{s}-curves shows its loss and top-1 accuracy per "
            f"epoch. Training took {duration(m.train_seconds)} for {len(m.checkpoint['history'])} epochs.", "",
            table(["setting", "value"], _setting_rows(m.config), f"Training setup of {m.label}", f"{s}-setup"),
            figure(f / "training/training_curves.png", m, "curves", f"Loss and top-1 accuracy of {m.label} per epoch, train vs validation"),
            ]
    out += ["### Architecture", "",
            f"@tbl-{s}-stages gives the output shape and parameter count of each stage at a 3×{m.config['input_size']}×"
            f"{m.config['input_size']} input ({m.parameters:,} parameters in all); the full module tree is in the appendix.", "",
            table(["stage", "output C×H×W", "parameters", "details"], stage_rows(f / "architecture/stages.csv"),
                  f"Stages of {m.label}", f"{s}-stages", "llrl")]
    filters = sorted(p for p in (f / "filters").glob("filters_*.png") if p.name != "filters_first.png")
    out += ["### Filters", "",
            f"@fig-{s}-filters-first shows the first convolution's filters as RGB images"
            + (", and " + ", ".join(f"@fig-{s}-filters-{i}" for i in range(len(filters)))
               + " the channel means of deeper filters (red positive, blue negative)" if filters else "") + ".", "",
            figure(f / "filters/filters_first.png", m, "filters-first", f"First-layer filters of {m.label}, one RGB image per output channel")]
    for i, path in enumerate(filters):
        layer = code(path.stem.removeprefix("filters_"))
        out.append(figure(path, m, f"filters-{i}", f"Filters of {m.label} {layer}, averaged over input channels"))
    maps = sorted((f / "feature_maps").glob("feature_maps_*.png"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    shown = maps[:FEATURE_MAP_FIGURES]
    out += ["### Feature maps", "",
            "The most active channels of each stage for test images: "
            + ", ".join(f"@fig-{s}-features-{i}" for i in range(len(shown)))
            + (f" ({len(maps) - len(shown)} more in {code(f'figures/{m.name}/feature_maps/')})" if len(maps) > len(shown) else "")
            + ".", ""]
    out += [figure(path, m, f"features-{i}", f"Feature maps of {m.label}, test image {i + 1}") for i, path in enumerate(shown)]
    out += ["### Grad-CAM across layers and classes", "",
            f"@fig-{s}-gradcam-layers shows Grad-CAM at each explained layer for test images spread over the classes; "
            f"@fig-{s}-gradcam-classes compares the maps of the predicted, the true and the runner-up class.", "",
            figure(f / "gradcam/gradcam_layers.png", m, "gradcam-layers", f"Grad-CAM of {m.label} per layer (predicted class)"),
            figure(f / "gradcam/gradcam_classes.png", m, "gradcam-classes", f"Grad-CAM of {m.label} for the predicted, true and runner-up class")]
    out += failure_section(m, figure)
    out += ["### Metrics", "",
            f"@tbl-{s}-metrics gives top-1 and top-5 accuracy; @fig-{s}-confusion the normalised confusion matrix of "
            f"the test split and @fig-{s}-per-class the accuracy of each class.", "",
            table(["split", "images", "top-1", "top-5"],
                  [[split, f"{r['n']:,}", percent(r["top1"]), percent(r["top5"])] for split, r in (("validation", val), ("test", test))],
                  f"Accuracy of {m.label}", f"{s}-metrics", "lrrr"),
            figure(f / "training/confusion_matrix.png", m, "confusion", f"Confusion matrix of {m.label} on the test split, rows normalised"),
            figure(f / "training/per_class_accuracy.png", m, "per-class", f"Test accuracy of {m.label} per class")]
    out += explanation_section(m, figure)
    return "\n".join(out)


def failure_section(m: ModelArtifacts, figure: FigureCopier) -> list[str]:
    f, s = m.figures / "failures", m.slug
    summary: Failures = json.loads((f / "failures.json").read_text())
    out = ["### Failure cases", ""]
    if not summary["failures"]:
        return out + ["No test image was misclassified.", ""]
    layer = code(summary["layer"])
    out += [f"@fig-{s}-failures shows the {len(summary['failures'])} most confident misclassifications of the test "
            f"split with Grad-CAM at {layer} for the predicted and the true class; @tbl-{s}-failures lists them.", ""]
    has_energy = summary["energy_in_mask"] is not None
    rows = []
    for r in summary["failures"]:
        row = [r["index"], md(r["label_name"]), md(r["pred_name"]), percent(r["confidence"])]
        if "texture" in r:
            row.append(md(r["texture"]))
        if has_energy:
            row += [percent(r["energy_in_mask_pred"]), percent(r["energy_in_mask_true"])]
        rows.append(row)
    header = ["test image", "true class", "predicted", "confidence"] + (["background"] if "texture" in summary["failures"][0] else [])
    header += ["CAM in object (pred.)", "CAM in object (true)"] if has_energy else []
    out += [table(header, rows, f"Most confident misclassifications of {m.label}", f"{s}-failures", "rllr" + "l" * (len(header) - 4)),
            figure(f / "failures.png", m, "failures", f"Most confident failures of {m.label} with Grad-CAM for the predicted and the true class")]
    if has_energy:
        stats = summary["energy_in_mask"]
        out += [f"Over the whole test split, the share of the Grad-CAM mass inside the object is {percent(stats['correct']['mean'])} "
                f"for correctly classified images and {percent(stats['misclassified']['mean'])} for misclassified ones, "
                f"while objects cover {percent(summary['mask_area']['correct'])} and {percent(summary['mask_area']['misclassified'])} "
                f"of those images (@fig-{s}-energy). A share near the object's area means the map spreads over the background.", "",
                figure(f / "failure_energy.png", m, "energy", f"Share of {m.label}'s Grad-CAM inside the object mask, correct vs misclassified")]
    return out


def _score(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def explanation_section(m: ModelArtifacts, figure: FigureCopier) -> list[str]:
    """Localisation, faithfulness and sanity check of each CAM method, beside their baselines."""
    report, f, s = m.explanations, m.figures / "explanations", m.slug
    methods = list(report["methods"])
    names = [md(METHOD_NAMES.get(method, method)) for method in methods]
    layer = code(report["layer"])
    out = ["### Can the heatmaps be trusted?", ""]
    localisation = report["methods"][methods[0]]["localisation"]
    if localisation is None:
        out += [f"Localisation is not measured: {md(report['methods'][methods[0]]['localisation_skipped'])}.", ""]
    else:
        deepest = report["layers"][-1]
        baselines = localisation[deepest]["baselines"]
        rows = []
        for name, groups in [*zip(names, (report["methods"][k]["localisation"][deepest] for k in methods)),
                             ("*centre-peaked map*", baselines["centre"]), ("*random map*", baselines["random"])]:
            rows.append([name] + [_score(groups[g][metric]) for metric in ("pointing_game", "energy")
                                  for g in ("all", "correct", "misclassified")])
        n = localisation[deepest]
        out += [f"**Localisation.** On the {n['all']['n']:,} test images, @tbl-{s}-localisation gives the pointing game "
                f"(is the map's maximum on the object, within {report['tolerance_px']:.1f} px?) and the energy-based pointing "
                f"game (the share of the map's mass on the object) at {code(deepest)}, for correctly classified and "
                "misclassified images, beside a map peaked at the image centre and a random map. A method that beats "
                f"neither baseline does not localise the object. @fig-{s}-localisation shows every explained layer.", "",
                table(["map", "pointing game", "(correct)", "(misclassified)", "energy", "(correct)", "(misclassified)"], rows,
                      f"Localisation of {m.label}'s heatmaps at {code(deepest)} (higher is better)", f"{s}-localisation", "lrrrrrr"),
                figure(f / "localisation.png", m, "localisation", f"Pointing game and energy in the object mask of {m.label}, per layer and method")]
    rows = []
    for name, method in zip(names, methods):
        faith, sanity = report["methods"][method]["faithfulness"], report["methods"][method]["sanity"]
        verdict = {True: "passes", False: "**fails**", None: "–"}[sanity["passes"]]
        rows.append([name, _score(faith["deletion_auc"]), _score(faith["insertion_auc"]),
                     _score(sanity["spearman"][-1]), _score(sanity["ssim"][-1]), verdict])
    faith = report["methods"][methods[0]]["faithfulness"]
    rows.append(["*random map*", _score(faith["random_deletion_auc"]), _score(faith["random_insertion_auc"]), "–", "–", "–"])
    # A model that already recognises the blurred image leaves insertion nothing to tell apart.
    saturated = faith["random_insertion_auc"] is not None and faith["random_insertion_auc"] >= SATURATED_INSERTION
    out += [f"**Faithfulness and sanity.** On {report['num_images']} test images spread over the classes, @tbl-{s}-faithfulness "
            f"gives the deletion AUC (pixels removed most salient first; lower means the map found what the score "
            f"depends on) and the insertion AUC (pixels restored into a blurred image; higher is better) of the "
            f"maps at {layer}, beside a random map (@fig-{s}-deletion-insertion). The sanity check randomises the weights stage by "
            f"stage from the head down: a method passes when its maps stop resembling the originals (mean Spearman "
            f"correlation below {report['sanity_threshold']:g} once every stage is random; @fig-{s}-sanity, @fig-{s}-sanity-maps)."
            + (f" Here even a random map reaches an insertion AUC of {_score(faith['random_insertion_auc'])}: the model "
               "already recognises the blurred image, so insertion cannot tell the maps apart and deletion is the "
               "informative curve." if saturated else ""), "",
            table(["map", "deletion AUC", "insertion AUC", "Spearman, all random", "SSIM, all random", "sanity check"], rows,
                  f"Faithfulness and sanity check of {m.label}'s heatmaps at {layer}", f"{s}-faithfulness", "lrrrrl"),
            figure(f / "deletion_insertion.png", m, "deletion-insertion", f"Deletion and insertion curves of {m.label}'s heatmaps, mean over images"),
            figure(f / "sanity_curves.png", m, "sanity", f"Similarity of {m.label}'s heatmaps to the originals as stages are randomised"),
            figure(f / "sanity_maps.png", m, "sanity-maps", f"Heatmaps of {m.label} as its stages are randomised, head first")]
    return out


def git_state(source_dir: Path) -> str:
    """The commit of the workflow's source and whether its tree had uncommitted changes."""
    try:
        commit = subprocess.run(["git", "-C", str(source_dir), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(source_dir), "status", "--porcelain"], capture_output=True, text=True, check=True).stdout.strip()
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
        rows.append([md(parts[0]), md("/".join(parts[1:])) or "–", duration(float(record["s"])),
                     f"{float(rss):,.0f} MB" if rss not in ("NA", "-") else "–"])
    return rows


def appendix(models: Sequence[ModelArtifacts], config: dict[str, Any], source_dir: Path, benchmarks: Sequence[Path],
             benchmark_root: Path) -> str:
    """Reproducibility appendix (config, code version, software, machine, checksums, rule times) and module trees."""
    out = ["## Reproducibility", "",
           f"Built by convscope from commit {git_state(source_dir)} with Python {platform.python_version()} on "
           f"{md(machine())}. @tbl-packages lists the package versions, @tbl-checksums the SHA-256 of every "
           "checkpoint and @tbl-rule-times the wall time of each workflow job.", "",
           table(["package", "version"], [[md(p), md(_version(p))] for p in PACKAGES], "Package versions", "packages"),
           table(["model", "checkpoint", "SHA-256"],
                 [[m.label, code(paths.CHECKPOINT.format(model=m.name)), code(m.sha256)] for m in models],
                 "Checkpoints and their SHA-256", "checksums"),
           table(["rule", "job", "wall time", "peak memory"], rule_times(benchmarks, benchmark_root),
                 "Wall time and peak memory of each workflow job (Snakemake benchmarks)", "rule-times", "llrr"),
           "The resolved configuration (defaults filled in) that built this report:", "",
           "```yaml", yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=100).rstrip(), "```", ""]
    out += ["## Module trees", ""]
    for m in models:
        tree = (m.figures / "architecture/architecture.txt").read_text().rstrip()
        out += [f"### {m.label}", "", f"`print(model)` of {m.label}:", "", "```text", tree, "```", ""]
    return "\n".join(out)


def variables(models: Sequence[ModelArtifacts], index: dict[str, Any], dataset: dict[str, Any]) -> dict[str, Any]:
    """The numbers the hand-written prose quotes with ``{{< var … >}}``, as escaped Markdown strings."""
    best = max(models, key=lambda m: (m.metrics["splits"]["test"]["top1"], m.name))
    counts = split_sizes(index)
    name = dataset.get("name") or {"shapes": "the embedded shapes set", "cifar10": "CIFAR-10"}.get(index["kind"], Path(str(dataset.get("root"))).name)
    return {
        "dataset": {"name": md(name), "classes": len(index["classes"]), **{split: f"{n:,}" for split, n in counts.items()}},
        "models": {"count": len(models), "names": ", ".join(m.label for m in models)},
        "best": {"name": best.label, "test_top1": percent(best.metrics["splits"]["test"]["top1"]),
                 "test_top5": percent(best.metrics["splits"]["test"]["top5"]),
                 "val_top1": percent(best.metrics["splits"]["val"]["top1"])},
    }


def write_sources(model_names: Sequence[str], config: dict[str, Any], index_path: str | Path, out_dir: str | Path,
                  variables_path: str | Path, source_dir: str | Path, benchmarks: Sequence[str | Path] = (),
                  workdir: str | Path = ".") -> None:
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
    """
    workdir, out_dir = Path(workdir), Path(out_dir)
    index = json.loads(Path(index_path).read_text())
    models = [load_model_artifacts(name, workdir) for name in model_names]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and swapped in at the end: a failure leaves no half-generated folder.
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=".generated-"))
    try:
        figure = FigureCopier(tmp, out_dir.name)
        (tmp / "comparison.qmd").write_text(comparison_section(models))
        (tmp / "dataset.qmd").write_text(dataset_section(index, config["dataset"]))
        (tmp / "models.qmd").write_text("\n".join(model_section(m, figure) for m in models))
        (tmp / "appendix.qmd").write_text(appendix(models, config, Path(source_dir), [Path(b) for b in benchmarks],
                                                    workdir / paths.BENCHMARKS))
        values = yaml.safe_dump(variables(models, index, config["dataset"]), sort_keys=False, allow_unicode=True)
        Path(variables_path).write_text(values)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
