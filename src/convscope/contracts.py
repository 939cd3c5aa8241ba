"""The shapes of the artifacts other tools read, declared once: the code that writes each file and the code that
reads it both use these types (the README's artifact table describes the same files).

``TypedDict`` keeps them plain dicts and JSON, so ``torch.load(..., weights_only=True)`` and ``json.load``
read them without convscope.
"""

from __future__ import annotations

from typing import Any, TypedDict


class Epoch(TypedDict):
    """One entry of ``history.json`` (and of the checkpoint's ``history``)."""

    epoch: int
    train_loss: float
    train_top1: float
    train_top5: float
    val_loss: float
    val_top1: float
    val_top5: float
    lr: float
    seconds: float


class TrainingRuntime(TypedDict):
    """How a model was trained (``convscope.runtime.Setup.record``): ``auto`` settings as they were decided."""

    device: str  # cpu, cuda, mps
    precision: str  # fp32, bf16, fp16
    channels_last: bool
    workers: int


class Checkpoint(TypedDict):
    """``results/{model}/checkpoint.pt``."""

    state_dict: dict[str, Any]  # tensors
    arch: str
    num_classes: int
    classes: list[str]
    input_size: int
    mean: list[float]
    std: list[float]
    epoch: int
    config: dict[str, Any]  # the model's resolved config (ModelConfig as a dict)
    model_kwargs: dict[
        str, Any
    ]  # the torchvision builder's keyword arguments: get_model(arch, num_classes=..., **model_kwargs)
    history: list[Epoch]
    runtime: TrainingRuntime


class CalibrationBin(TypedDict):
    """One bin of the reliability diagram: images whose top-1 confidence lies in ``(lower, upper]``."""

    lower: float
    upper: float
    count: int
    confidence: float | None  # mean top-1 confidence of the bin; None when empty
    accuracy: float | None  # share of its images classified correctly; None when empty


class Calibration(TypedDict):
    """Expected calibration error (Guo et al. 2017): equal-width confidence bins, weighted |accuracy - confidence|."""

    ece: float
    bins: list[CalibrationBin]


class SplitMetrics(TypedDict):
    n: int
    top1: float
    top5: float
    per_class_accuracy: dict[str, float | None]
    confusion_matrix: list[list[int]]  # rows: true class, columns: predicted
    calibration: Calibration


class Metrics(TypedDict):
    """``results/{model}/metrics.json``: identical across clean builds."""

    model: str
    arch: str
    classes: list[str]
    splits: dict[str, SplitMetrics]  # "val", "test"


class Failure(TypedDict):
    index: int
    label: int
    label_name: str
    pred: int
    pred_name: str
    confidence: float
    texture: str  # shapes only
    energy_in_mask_pred: float | None
    energy_in_mask_true: float | None


class Failures(TypedDict):
    """``figures/{model}/failures/failures.json``."""

    k: int
    layer: str
    failures: list[Failure]
    energy_in_mask: dict[str, dict[str, float | int | None]] | None  # "correct"/"misclassified": mean, std, n
    mask_area: dict[str, float | None] | None


class GroupScores(TypedDict):
    pointing_game: float | None
    energy: float | None
    n: int
    flagged: int


class Faithfulness(TypedDict):
    deletion_auc: float | None
    insertion_auc: float | None
    random_deletion_auc: float | None
    random_insertion_auc: float | None
    n: int
    flagged: int
    steps: int


class RoadScores(TypedDict):
    morf: float | None
    lerf: float | None
    random_morf: float | None
    random_lerf: float | None
    fractions: list[float]
    noise: float
    n: int
    flagged: int


class SanityCheck(TypedDict):
    steps: list[str]
    spearman: list[float | None]
    ssim: list[float | None]
    n: int
    flagged: int
    passes: bool | None


LOCALISATION_GROUPS = ("all", "correct", "misclassified")  # test images by the model's prediction


class MethodReport(TypedDict):
    localisation: dict[str, dict[str, Any]] | None  # layer -> group (LOCALISATION_GROUPS) -> GroupScores, "baselines"
    localisation_skipped: str | None
    faithfulness: Faithfulness
    road: RoadScores
    sanity: SanityCheck


class Explanations(TypedDict):
    """``results/{model}/explanations.json`` (details in ``convscope.explanations``)."""

    schema_version: int
    model: str
    arch: str
    input_size: int
    split: str
    layers: list[str]
    layer: str
    num_images: int
    sample_indices: list[int]
    steps: int
    seed: int
    precision: str  # autocast of the forward passes that score perturbed images (deletion, insertion, ROAD)
    tolerance_px: float | None
    sanity_threshold: float
    methods: dict[str, MethodReport]


class PairAgreement(TypedDict):
    """Two models' maps of the same test images compared (``convscope.agreement``)."""

    models: list[str]  # the two model names
    spearman: list[float | None]  # per image: rank correlation of the two maps; None where a map is undefined
    pointing: list[float | None]  # per image: do the two maxima lie within the tolerance (1) or not (0)
    mean_spearman: float | None
    pointing_agreement: float | None
    n: int  # images where both maps are defined
    undefined: int


class Agreement(TypedDict):
    """``results/comparison/agreement.json`` (details in ``convscope.agreement``)."""

    schema_version: int
    models: list[str]
    skipped: str | None  # why the maps were not compared (one model, different fields of view)
    split: str
    method: str
    layers: dict[str, str]  # model -> the layer explained (its deepest configured one)
    input_sizes: dict[str, int]
    field_of_view: dict[str, float]  # share of the shorter side the evaluation crop keeps
    size: int | None  # the side the maps are compared at (the smallest input size)
    tolerance_px: float | None
    sample_indices: list[int]
    labels: list[int]
    predictions: dict[str, list[int]]
    pairs: list[PairAgreement]
    mean_spearman: float | None  # over every pair and image where both maps are defined
    pointing_agreement: float | None
