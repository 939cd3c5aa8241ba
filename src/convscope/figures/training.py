"""Training: loss and accuracy curves per epoch, the test confusion matrix, per-class test accuracy and the
reliability diagram of the test split (its numbers come from ``metrics.json``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import PowerNorm
from matplotlib.ticker import PercentFormatter

from convscope.errors import ArtifactError
from convscope.figures.drawing import SMALL, name_label, save_figure
from convscope.io import read_artifact, write_npz_atomic, write_text_atomic

ANNOTATE_MAX = 20  # confusion cells carry their value up to this many classes
TICKS_MAX = 40  # class names on the confusion axes up to this many classes
BARS_MAX = 40  # the per-class chart shows every class up to this many, else only the WORST_SHOWN worst
WORST_SHOWN = 20


def _curves(history: list[dict], label: str) -> plt.Figure:
    epochs = [row["epoch"] for row in history]
    marker = "o" if len(epochs) <= 30 else None
    fig, (loss, top1) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    for ax, key, name in ((loss, "loss", "cross-entropy loss"), (top1, "top1", "top-1 accuracy")):
        ax.plot(epochs, [row[f"train_{key}"] for row in history], marker=marker, label="train (mean over the epoch)")
        ax.plot(epochs, [row[f"val_{key}"] for row in history], marker=marker, label="val (after the epoch)")
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    top1.set_ylim(0, 1.02)
    top1.yaxis.set_major_formatter(PercentFormatter(1.0))
    loss.set_ylim(bottom=0)
    if len(epochs) <= 20:
        for ax in (loss, top1):
            ax.set_xticks(epochs)
    fig.suptitle(f"{label}: training curves")
    return fig


def _confusion(normalised: np.ndarray, classes: list[str], label: str, test: dict) -> plt.Figure:
    n = len(classes)
    side = float(np.clip(0.45 * n + 2.5, 5, 12))
    fig, ax = plt.subplots(figsize=(side + 1, side), layout="constrained")
    # Square-root colours: a 2 % confusion stays visible next to a 95 % diagonal.
    norm = PowerNorm(gamma=0.5, vmin=0, vmax=1)
    image = ax.imshow(normalised, cmap="Blues", norm=norm)
    if n <= TICKS_MAX:
        size = SMALL if n > ANNOTATE_MAX else 9
        ax.set_xticks(range(n), classes, rotation=45, ha="right", rotation_mode="anchor", fontsize=size)
        ax.set_yticks(range(n), classes, fontsize=size)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    if n <= ANNOTATE_MAX:
        for (row, column), value in np.ndenumerate(normalised):
            if value > 0:
                ax.text(
                    column,
                    row,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=SMALL,
                    color="white" if norm(value) > 0.6 else "black",
                )
    ax.set_xlabel("predicted class" + ("" if n <= TICKS_MAX else f" (all {n}, in class order)"))
    ax.set_ylabel("true class" + ("" if n <= TICKS_MAX else f" (all {n}, in class order)"))
    ax.set_title(
        f"{label}: confusion matrix, test split\nn = {test['n']}, top-1 {test['top1']:.1%}, rows normalised to 1"
    )
    fig.colorbar(
        image,
        ax=ax,
        shrink=0.8,
        label="fraction of the true class (square-root scale)",
        ticks=[0, 0.02, 0.1, 0.25, 0.5, 0.75, 1],
    )
    return fig


def _per_class(table: pd.DataFrame, label: str, overall: float) -> plt.Figure:
    shown = table.dropna(subset=["accuracy"]).sort_values("accuracy", kind="stable")
    worst = len(shown) > BARS_MAX
    if worst:
        shown = shown.head(WORST_SHOWN)
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(shown) + 1.6), layout="constrained")
    positions = np.arange(len(shown))
    ax.barh(positions, shown["accuracy"], color="tab:blue")
    ax.set_yticks(positions, shown["class"], fontsize=SMALL if len(shown) > 12 else 9)
    ax.invert_yaxis()  # worst on top
    for y, value in zip(positions, shown["accuracy"]):
        inside = value >= 0.1  # at the bar's start, clear of the overall line (which sits near the bar ends)
        ax.text(
            0.01 if inside else value + 0.01,
            y,
            f"{value:.0%}",
            va="center",
            fontsize=SMALL,
            color="white" if inside else "black",
        )
    ax.axvline(overall, color="tab:red", linestyle="--")
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("test top-1 accuracy of the class")
    which = f"the {len(shown)} worst of {len(table)} classes" if worst else "sorted, worst on top"
    ax.set_title(f"{label}: per-class accuracy, test split\n{which}; dashed line: overall top-1 {overall:.1%}")
    return fig


def _reliability(calibration: dict, label: str, n: int) -> plt.Figure:
    bins = calibration["bins"]
    lower = np.array([b["lower"] for b in bins])
    width = np.array([b["upper"] for b in bins]) - lower
    counts = np.array([b["count"] for b in bins])
    filled = counts > 0
    accuracy = np.array([b["accuracy"] or 0.0 for b in bins])
    confidence = np.array([np.nan if b["confidence"] is None else b["confidence"] for b in bins])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 6.2), sharex=True, height_ratios=(3, 1.2), layout="constrained")
    top.bar(
        lower[filled],
        accuracy[filled],
        width[filled],
        align="edge",
        color="tab:blue",
        edgecolor="white",
        label="accuracy of the bin",
    )
    # The gap between a bar and its mean confidence is the bin's miscalibration (above the bar: overconfident).
    top.bar(
        lower[filled],
        confidence[filled] - accuracy[filled],
        width[filled],
        bottom=accuracy[filled],
        align="edge",
        facecolor="none",
        edgecolor="tab:red",
        hatch="///",
        linewidth=0.8,
        label="gap to the mean confidence",
    )
    top.plot([0, 1], [0, 1], color="black", linestyle="--", linewidth=1, label="perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.yaxis.set_major_formatter(PercentFormatter(1.0))
    top.grid(alpha=0.3)
    top.legend(loc="upper left", fontsize=SMALL)
    top.set_title(f"{label}: reliability diagram, test split\nECE {calibration['ece']:.3f} ({len(bins)} bins), n = {n}")
    bottom.bar(lower, counts, width, align="edge", color="0.55", edgecolor="white")
    for x, w, count in zip(lower[filled], width[filled], counts[filled]):
        bottom.text(x + w / 2, count, str(count), ha="center", va="bottom", fontsize=SMALL)
    bottom.set_ylim(0, max(counts.max(initial=0), 1) * 1.25)
    bottom.set_ylabel("images")
    bottom.set_xlabel("top-1 confidence")
    bottom.xaxis.set_major_formatter(PercentFormatter(1.0))
    return fig


def render_training(history_path: str | Path, metrics_path: str | Path, out_dir: str | Path) -> list[Path]:
    """Writes training curves, the row-normalised test confusion matrix and per-class test accuracy. Reads JSON
    only, so the job needs neither torch nor the checkpoint.

    Args:
        history_path: the model's ``history.json`` (one entry per epoch gives the curves).
        metrics_path: the model's ``metrics.json`` (its model, architecture, classes and ``test`` split give the
            rest).
        out_dir: folder for the files (created).

    Returns:
        ``training_curves.png/.csv``, ``confusion_matrix.png/.npz``, ``per_class_accuracy.png/.csv``,
        ``reliability.png/.csv``.
    """
    history_path, metrics_path = Path(history_path), Path(metrics_path)
    history = read_artifact(history_path, "train")
    if not isinstance(history, list) or not history:
        raise ArtifactError(f"training history {str(history_path)!r} is empty; curves need at least one epoch")
    metrics = read_artifact(metrics_path, "evaluate")
    test = metrics.get("splits", {}).get("test")
    if test is None:
        raise ArtifactError(f"metrics file {str(metrics_path)!r} has no test split; rerun the evaluate step")
    if "calibration" not in test:
        raise ArtifactError(f"metrics file {str(metrics_path)!r} has no calibration; rerun the evaluate step")
    classes = metrics["classes"]
    counts = np.asarray(test["confusion_matrix"], dtype=np.int64)
    if counts.shape != (len(classes), len(classes)):
        raise ArtifactError(
            f"confusion matrix in {str(metrics_path)!r} is {counts.shape} for {len(classes)} classes; rerun the "
            "evaluate step"
        )
    label = name_label(metrics["model"], metrics["arch"])
    out_dir = Path(out_dir)

    totals = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(
        counts, totals, out=np.zeros(counts.shape), where=totals > 0
    )  # a class without test images stays 0
    table = pd.DataFrame(
        {
            "class": classes,
            "accuracy": [
                np.nan if test["per_class_accuracy"][c] is None else test["per_class_accuracy"][c] for c in classes
            ],
            "n": totals[:, 0],
        }
    ).sort_values("accuracy", kind="stable")

    return [
        save_figure(_curves(history, label), out_dir / "training_curves.png"),
        write_text_atomic(out_dir / "training_curves.csv", pd.DataFrame(history).to_csv(index=False)),
        save_figure(_confusion(normalised, classes, label, test), out_dir / "confusion_matrix.png"),
        write_npz_atomic(out_dir / "confusion_matrix.npz", counts=counts, normalised=normalised, classes=classes),
        save_figure(_per_class(table, label, test["top1"]), out_dir / "per_class_accuracy.png"),
        write_text_atomic(out_dir / "per_class_accuracy.csv", table.to_csv(index=False)),
        save_figure(_reliability(test["calibration"], label, test["n"]), out_dir / "reliability.png"),
        write_text_atomic(out_dir / "reliability.csv", pd.DataFrame(test["calibration"]["bins"]).to_csv(index=False)),
    ]


def render(inputs: Mapping[str, str], out_dir: Path, settings: dict) -> list[Path]:
    """The family's entry point (see ``convscope.figures``)."""
    return render_training(inputs["history"], inputs["metrics"], out_dir, **settings)
