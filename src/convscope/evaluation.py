"""Evaluation: top-1/top-5 per split, per-class accuracy, confusion matrix, calibration, per-image predictions."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from convscope import runtime
from convscope.batches import batches
from convscope.config import ModelConfig, RuntimeConfig
from convscope.contracts import Calibration, Checkpoint, Metrics, SplitMetrics
from convscope.data import ImageSource, open_split
from convscope.errors import ArtifactError
from convscope.io import write_json_atomic
from convscope.models import model_from_checkpoint
from convscope.training import evaluate_loader, load_checkpoint, topk_correct
from convscope.transforms import build_transform

if TYPE_CHECKING:  # imported where predictions are written or read: jobs that only load a model skip it
    import pandas as pd

EVAL_SPLITS = ("val", "test")
CALIBRATION_BINS = 15  # as Guo et al. 2017
CALIBRATION_DECIMALS = 6  # metrics.json must be identical across clean builds: no float-noise digits


def calibration(logits: torch.Tensor, labels: torch.Tensor, bins: int = CALIBRATION_BINS) -> Calibration:
    """Expected calibration error and the reliability diagram of top-1 predictions (Guo et al. 2017).

    Images fall into ``bins`` equal-width bins of top-1 softmax confidence, ``(m-1)/M < p <= m/M``; ECE is the
    mean over bins of ``|accuracy - mean confidence|`` weighted by each bin's share of the images.

    Args:
        logits: N×K model outputs.
        labels: N true classes.
        bins: Number of confidence bins.

    Returns:
        ``{"ece": float, "bins": [{"lower", "upper", "count", "confidence", "accuracy"}, ...]}`` (empty bins
        have None confidence and accuracy), rounded to 6 decimals.
    """
    if logits.dim() != 2 or labels.shape != logits.shape[:1] or bins < 1:
        raise ValueError(
            f"need N×K logits, N labels and bins >= 1, got {tuple(logits.shape)}, {tuple(labels.shape)}, {bins}"
        )
    confidence, predicted = logits.double().softmax(dim=1).max(dim=1)
    correct = (predicted == labels).double()
    # A confidence of exactly m/M belongs to bin m (upper edge included); 0 cannot occur after a softmax.
    which = (confidence * bins).ceil().long().clamp(1, bins) - 1
    count = torch.bincount(which, minlength=bins)
    summed_confidence = torch.zeros(bins, dtype=torch.float64).index_add_(0, which, confidence)
    summed_correct = torch.zeros(bins, dtype=torch.float64).index_add_(0, which, correct)
    ece = (summed_correct - summed_confidence).abs().sum().item() / max(len(labels), 1)
    table = []
    for m in range(bins):
        n = int(count[m])
        table.append(
            {
                "lower": round(m / bins, CALIBRATION_DECIMALS),
                "upper": round((m + 1) / bins, CALIBRATION_DECIMALS),
                "count": n,
                "confidence": round(summed_confidence[m].item() / n, CALIBRATION_DECIMALS) if n else None,
                "accuracy": round(summed_correct[m].item() / n, CALIBRATION_DECIMALS) if n else None,
            }
        )
    return {"ece": round(ece, CALIBRATION_DECIMALS), "bins": table}


def split_metrics(logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> SplitMetrics:
    """Top-1, top-5, per-class accuracy, the confusion matrix (rows: true class, columns: predicted) and the
    calibration of the top-1 confidence."""
    predicted = logits.argmax(dim=1)
    confusion = torch.zeros(len(classes), len(classes), dtype=torch.long)
    confusion.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    per_class_total = confusion.sum(dim=1)
    per_class = {
        name: (confusion[i, i].item() / per_class_total[i].item()) if per_class_total[i] else None
        for i, name in enumerate(classes)
    }
    return {
        "n": len(labels),
        "top1": topk_correct(logits, labels, 1).float().mean().item(),
        "top5": topk_correct(logits, labels, 5).float().mean().item(),
        "per_class_accuracy": per_class,
        "confusion_matrix": confusion.tolist(),
        "calibration": calibration(logits, labels),
    }


def prediction_rows(split: str, logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> pd.DataFrame:
    """One row per image: true and predicted class, confidence and the top-5 with confidences."""
    import pandas as pd

    probabilities = logits.softmax(dim=1)
    top = probabilities.topk(min(5, len(classes)), dim=1)
    predicted = top.indices[:, 0]
    return pd.DataFrame(
        {
            "split": split,
            "index": range(len(labels)),
            "label": labels.tolist(),
            "label_name": [classes[i] for i in labels.tolist()],
            "pred": predicted.tolist(),
            "pred_name": [classes[i] for i in predicted.tolist()],
            "confidence": top.values[:, 0].tolist(),
            "correct": (predicted == labels).tolist(),
            "top5": [" ".join(map(str, row)) for row in top.indices.tolist()],
            "top5_confidence": [" ".join(f"{p:.6f}" for p in row) for row in top.values.tolist()],
        }
    )


def evaluate_model(
    checkpoint_path: str | Path,
    index_path: str | Path,
    metrics_path: str | Path,
    predictions_path: str | Path,
    timings_path: str | Path,
    run: RuntimeConfig | None = None,
    threads: int | None = None,
) -> Metrics:
    """Evaluates a checkpoint on the val and test splits and writes metrics, predictions and timings.

    ``metrics.json`` holds only what the model and data determine, so two clean builds give
    identical files; wall times go to ``timings.json``. The forward passes run in fp32 whatever
    ``runtime.precision`` says: the failure figures recompute the predictions' confidences with fp32 CAM passes and
    reject a gap above 1e-3, which bf16 logits exceed.
    """
    import pandas as pd

    run = run or RuntimeConfig.defaults()
    if threads:
        torch.set_num_threads(threads)
    runtime.set_determinism(run.deterministic)
    checkpoint = load_checkpoint(checkpoint_path)
    config = ModelConfig.from_dict(checkpoint["config"])
    model = model_from_checkpoint(checkpoint)
    setup = runtime.resolve(model, run.device, "fp32", run.workers)
    print(f"{config.name}: evaluating on {setup.describe()}")
    model = setup.prepare(model)
    metrics: Metrics = {"model": config.name, "arch": config.arch, "classes": checkpoint["classes"], "splits": {}}
    timings, frames = {}, []
    for split in EVAL_SPLITS:
        source = open_split(index_path, split)
        if source.classes != checkpoint["classes"]:
            raise ArtifactError(
                f"checkpoint {str(checkpoint_path)!r} was trained on {len(checkpoint['classes'])} "
                "classes but the dataset has "
                f"{len(source.classes)}; retrain the model on this dataset"
            )
        started = time.perf_counter()
        loader = batches(source, config, False, run.eval_batch_size, setup)
        logits, labels = evaluate_loader(model, loader, setup, desc=f"{config.name} {split}")
        seconds = time.perf_counter() - started
        timings[split] = {"seconds": seconds, "images_per_s": len(labels) / seconds if seconds else None}
        metrics["splits"][split] = split_metrics(logits, labels, checkpoint["classes"])
        frames.append(prediction_rows(split, logits, labels, checkpoint["classes"]))
        print(
            f"{config.name} {split}: top-1 {metrics['splits'][split]['top1']:.4f}, "
            f"top-5 {metrics['splits'][split]['top5']:.4f} (n={len(labels)})"
        )
    write_json_atomic(Path(metrics_path), metrics)
    write_json_atomic(Path(timings_path), timings)
    predictions = pd.concat(frames, ignore_index=True)
    tmp = Path(predictions_path).with_suffix(".csv.tmp")
    predictions.to_csv(tmp, index=False, float_format="%.6f")
    tmp.replace(predictions_path)
    return metrics


PREDICTION_COLUMNS = ("split", "index", "label", "pred", "confidence")


def load_model(checkpoint_path: str | Path) -> tuple[Checkpoint, ModelConfig, torch.nn.Module]:
    """The checkpoint dict, its model config and the trained model (eval mode, CPU)."""
    checkpoint = load_checkpoint(checkpoint_path)
    return checkpoint, ModelConfig.from_dict(checkpoint["config"]), model_from_checkpoint(checkpoint)


def open_model_and_split(
    checkpoint_path: str | Path, index_path: str | Path, split: str
) -> tuple[ModelConfig, torch.nn.Module, ImageSource]:
    """The checkpoint's config and model (eval mode, CPU) and one split read with its evaluation transform."""
    checkpoint, config, model = load_model(checkpoint_path)
    source = open_split(index_path, split, build_transform(config, train=False))
    if source.classes != checkpoint["classes"]:
        raise ArtifactError(
            f"checkpoint {str(checkpoint_path)!r} was trained on classes {checkpoint['classes']} but "
            f"{str(index_path)!r} has {source.classes}; use the matching dataset"
        )
    return config, model, source


def read_test_predictions(predictions_path: str | Path, source: ImageSource) -> pd.DataFrame:
    """The test rows of ``predictions.csv`` in index order, checked against the test split."""
    import pandas as pd

    predictions = pd.read_csv(predictions_path)
    missing = [c for c in PREDICTION_COLUMNS if c not in predictions.columns]
    if missing:
        raise ArtifactError(
            f"predictions file {str(predictions_path)!r} lacks columns {missing}; write it with convscope evaluate"
        )
    test = predictions[predictions["split"] == "test"].sort_values("index").reset_index(drop=True)
    if test["index"].tolist() != list(range(len(source))) or test["label"].tolist() != source.labels:
        raise ArtifactError(
            f"predictions file {str(predictions_path)!r} does not match the test split "
            f"({len(test)} rows for {len(source)} images); rerun evaluate"
        )
    return test
