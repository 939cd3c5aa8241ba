"""Grad-CAM and failure-case figures on tiny shapes data: the npz contract, agreement with the engine, the choice
of failures, the energy-in-mask numbers and blank maps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from conftest import UNTRAINED
from PIL import Image
from torch import nn

from convscope.cam import grad_cam
from convscope.config import ModelConfig, RuntimeConfig, load_config
from convscope.data import ArraySource, ImageSource, open_split, prepare_dataset, read_index, sample_indices, shapes
from convscope.errors import UserError
from convscope.evaluation import evaluate_model
from convscope.figures.failures import render_failures
from convscope.figures.gradcam import render_gradcam
from convscope.models import default_cam_layers, model_from_checkpoint
from convscope.training import checkpoint_of, load_checkpoint
from convscope.transforms import build_transform

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPES = {"image_size": 32, "train_per_class": 4, "test_per_class": 3}
# ResNet at the images' own 32 px (mask geometry is the identity); Inception needs >= 75 px, so its transform
# resizes 32 → 80 and the masks are resized with it. The deepest default layers are 1×1 at these sizes (constant
# maps, no energy share), so the failures use one stage shallower.
RUNS = {
    "resnet18": {"input_size": 32, "layer": "layer3", "num_images": 4},
    "inception_v3": {"input_size": 80, "layer": "Mixed_6e", "num_images": 2},
}
K = 3


@pytest.fixture(scope="module")
def index_path(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    prepare_dataset(load_config({"dataset": {"shapes": SHAPES}}).dataset, out)
    return out / "index.json"


def make_checkpoint(
    folder: Path, index_path: Path, arch: str, seed: int, input_size: int, blank: bool = False
) -> tuple[Path, Path]:
    """A random-weights checkpoint in the convscope contract, and its predictions.csv from evaluate_model."""
    raw = {
        "dataset": {"shapes": SHAPES},
        "models": [{"name": f"{arch}_{seed}", "arch": arch, "input_size": input_size, "aux_logits": False}],
    }
    config = load_config(raw).models[0]
    torch.manual_seed(seed)
    kwargs = {"aux_logits": False, "init_weights": False} if arch == "inception_v3" else {}
    model = torchvision.models.get_model(arch, weights=None, num_classes=10, **kwargs)
    if arch == "inception_v3":  # default init gives near-constant logits and empty maps (see test_cam.py)
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    if blank:  # every logit is 0 whatever the input: no gradient reaches any layer
        with torch.no_grad():
            model.fc.weight.zero_()
            model.fc.bias.zero_()
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = folder / "checkpoint.pt"
    torch.save(checkpoint_of(model, config, list(shapes.CLASSES), epoch=0, history=[], run=UNTRAINED), checkpoint)
    predictions = folder / "predictions.csv"
    evaluate_model(
        checkpoint,
        index_path,
        folder / "metrics.json",
        predictions,
        folder / "timings.json",
        RuntimeConfig.defaults(device="cpu"),
    )
    return checkpoint, predictions


def read_test_split(checkpoint: Path, index_path: Path) -> ImageSource:
    """The test split read with the checkpoint's evaluation transform."""
    config = ModelConfig.from_dict(load_checkpoint(checkpoint)["config"])
    return open_split(index_path, "test", build_transform(config, train=False))


def render_run(arch: str, index_path: Path, folder: Path) -> dict:
    """Random-weights checkpoint, predictions and both figure families for one architecture of RUNS."""
    options = RUNS[arch]
    checkpoint, predictions = make_checkpoint(folder, index_path, arch, 0, options["input_size"])
    gradcam = render_gradcam(checkpoint, index_path, folder / "figs", num_images=options["num_images"])
    failures = render_failures(checkpoint, index_path, predictions, folder / "figs", k=K, layer=options["layer"])
    model = model_from_checkpoint(load_checkpoint(checkpoint))
    return {
        "arch": arch,
        "folder": folder,
        "checkpoint": checkpoint,
        "predictions": predictions,
        "model": model,
        "gradcam": gradcam,
        "failures": failures,
        **options,
    }


@pytest.fixture(scope="module")
def resnet_run(index_path, tmp_path_factory) -> dict:
    return render_run("resnet18", index_path, tmp_path_factory.mktemp("resnet18"))


@pytest.fixture(scope="module")
def inception_run(index_path, tmp_path_factory) -> dict:
    return render_run("inception_v3", index_path, tmp_path_factory.mktemp("inception_v3"))


@pytest.fixture(params=["resnet_run", "inception_run"])
def run(request) -> dict:
    return request.getfixturevalue(request.param)


def test_default_cam_layers():
    with torch.device("meta"):  # only module names are needed
        models = {
            arch: torchvision.models.get_model(arch, num_classes=10)
            for arch in ("resnet18", "mobilenet_v3_small", "densenet121")
        }
        models["inception_v3"] = torchvision.models.inception_v3(num_classes=10, aux_logits=False, init_weights=False)
        models["plain"] = nn.Sequential(
            nn.Conv2d(3, 4, 3),
            nn.ReLU(),
            nn.Conv2d(4, 4, 3),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4, 2),
        )
    assert default_cam_layers(models["resnet18"], "resnet18") == ["layer1", "layer2", "layer3", "layer4"]
    assert default_cam_layers(models["inception_v3"], "inception_v3") == ["Mixed_5d", "Mixed_6e", "Mixed_7c"]
    assert default_cam_layers(models["mobilenet_v3_small"], "mobilenet_v3_small") == [
        "features.2",
        "features.5",
        "features.8",
        "features.12",
    ]
    # DenseNet's last child is a BatchNorm: it stays the last column, the spacing skips pool/relu children.
    assert default_cam_layers(models["densenet121"], "densenet121") == [
        "features.denseblock1",
        "features.denseblock2",
        "features.denseblock3",
        "features.norm5",
    ]
    assert default_cam_layers(models["plain"], "plain") == ["2"]


def test_sample_indices_round_robin_over_classes():
    labels = [2, 0, 0, 1, 2, 0, 1]
    assert sample_indices(labels, 5) == [1, 3, 0, 2, 6]
    assert sample_indices(labels, 100) == [1, 3, 0, 2, 6, 4, 5]


def test_gradcam_npz_contract_and_engine(run, index_path):
    folder = run["folder"] / "figs"
    assert sorted(p.name for p in run["gradcam"]) == [
        "gradcam.npz",
        "gradcam_classes.npz",
        "gradcam_classes.png",
        "gradcam_layers.png",
    ]
    layers = default_cam_layers(run["model"], run["arch"])
    with np.load(folder / "gradcam.npz") as npz:
        arrays = {key: npz[key] for key in npz.files}
    assert set(arrays) == {"inputs", "targets", "labels", "layers"} | {
        f"{kind}_{layer}" for layer in layers for kind in ("cam", "flags")
    }
    n, size = run["num_images"], run["input_size"]
    assert arrays["layers"].tolist() == layers
    assert arrays["inputs"].shape == (n, 3, size, size) and arrays["inputs"].dtype == np.float32
    assert arrays["targets"].dtype == np.int64 and arrays["labels"].dtype == np.int64

    # The inputs are the evaluation transform's tensors of the round-robin sample, and reproduce the targets.
    source = read_test_split(run["checkpoint"], index_path)
    indices = sample_indices(source.labels, n)
    assert arrays["labels"].tolist() == [source.labels[i] for i in indices]
    np.testing.assert_array_equal(arrays["inputs"], torch.stack([source[i][0] for i in indices]).numpy())
    inputs = torch.from_numpy(arrays["inputs"])
    with torch.no_grad():
        logits = run["model"](inputs)
    assert logits.argmax(1).tolist() == arrays["targets"].tolist()

    direct = grad_cam(run["model"], inputs, layers)
    for layer in layers:
        cam = arrays[f"cam_{layer}"]
        assert cam.shape == (n, size, size) and cam.dtype == np.float32 and cam.min() >= 0 and cam.max() <= 1
        np.testing.assert_allclose(cam, direct.maps[layer].numpy(), atol=1e-6, rtol=0)
        assert (
            arrays[f"flags_{layer}"].dtype == bool and arrays[f"flags_{layer}"].tolist() == direct.flags[layer].tolist()
        )

    with np.load(folder / "gradcam_classes.npz") as classes:
        assert classes["layer"].item() == layers[-1]
        np.testing.assert_allclose(classes["probabilities"], logits.softmax(1).numpy(), atol=1e-6)
        assert classes["targets_pred"].tolist() == arrays["targets"].tolist()
        assert classes["targets_true"].tolist() == arrays["labels"].tolist()
        assert classes["targets_runner_up"].tolist() == direct.logits.argsort(1, descending=True)[:, 1].tolist()
        np.testing.assert_allclose(classes["cam_pred"], arrays[f"cam_{layers[-1]}"], atol=1e-6, rtol=0)
        runner_up = grad_cam(run["model"], inputs, layers[-1:], targets=classes["targets_runner_up"])
        np.testing.assert_allclose(classes["cam_runner_up"], runner_up.maps[layers[-1]].numpy(), atol=1e-6, rtol=0)


def test_correct_only_explains_correctly_classified_images(resnet_run, index_path, tmp_path):
    rows = pd.read_csv(resnet_run["predictions"]).query("split == 'test'").sort_values("index")
    correct = rows[rows["pred"] == rows["label"]]
    assert 0 < len(correct) < len(rows)  # random weights: some right, some wrong, so the filter matters
    render_gradcam(
        resnet_run["checkpoint"],
        index_path,
        tmp_path,
        num_images=4,
        correct_only=True,
        predictions_path=resnet_run["predictions"],
    )
    with np.load(tmp_path / "gradcam.npz") as arrays:
        assert arrays["targets"].tolist() == arrays["labels"].tolist()
        expected = correct["index"].to_numpy()[sample_indices(correct["label"].tolist(), 4)]
        assert arrays["labels"].tolist() == rows.set_index("index").loc[expected, "label"].tolist()
    with pytest.raises(UserError, match="correct_only needs the test split and the model's predictions.csv"):
        render_gradcam(resnet_run["checkpoint"], index_path, tmp_path, correct_only=True)


def test_failures_are_the_most_confident_and_energy_is_by_hand(run, index_path):
    folder = run["folder"] / "figs"
    assert sorted(p.name for p in run["failures"]) == [
        "failure_energy.png",
        "failures.json",
        "failures.npz",
        "failures.png",
    ]
    report = json.loads((folder / "failures.json").read_text())
    test = pd.read_csv(run["predictions"]).query("split == 'test'")
    wrong = test[test["pred"] != test["label"]]
    expected = sorted(zip(-wrong["confidence"], wrong["index"]))[:K]
    assert [f["index"] for f in report["failures"]] == [int(i) for _, i in expected]
    layer = run["layer"]
    assert report["k"] == K and report["layer"] == layer

    index = read_index(index_path)
    textures = shapes.load_arrays(index_path.parent)["textures"]
    source = read_test_split(run["checkpoint"], index_path)
    for failure in report["failures"]:
        assert failure["texture"] == shapes.TEXTURES[textures[index.refs["test"][failure["index"]]]]

    # By hand for the first failure: nearest-neighbour resize of the 32 px mask (torch's floor rule), then the sums.
    first = report["failures"][0]
    x = source[first["index"]][0][None]
    size = run["input_size"]
    rows = np.floor(np.arange(size) * 32 / size).astype(int)
    mask = source.mask(first["index"])[np.ix_(rows, rows)].astype(np.float64)
    for kind, target in (("pred", first["pred"]), ("true", first["label"])):
        cam = grad_cam(run["model"], x, [layer], targets=[target]).maps[layer][0].numpy().astype(np.float64)
        share = (cam * mask).sum() / cam.sum() if cam.sum() > 0 else None
        assert first[f"energy_in_mask_{kind}"] == (None if share is None else pytest.approx(share, abs=1e-5))

    stats = report["energy_in_mask"]
    assert set(stats) == {"correct", "misclassified"} and stats["correct"]["n"] + stats["misclassified"]["n"] <= len(
        source
    )
    assert stats["misclassified"]["n"] > 0 and 0 <= stats["misclassified"]["mean"] <= 1
    with np.load(folder / "failures.npz") as npz:
        assert npz["indices"].tolist() == [f["index"] for f in report["failures"]]
        assert npz["cam_pred"].shape == npz["cam_true"].shape == (K, size, size)
        energy, correct = npz["test_energy_in_mask"], npz["test_correct"]
        assert energy.shape == correct.shape == (len(source),)
        assert np.nanmean(energy[correct]) == pytest.approx(stats["correct"]["mean"], abs=1e-6)


def test_figure_depends_on_the_model(resnet_run, index_path):
    run = resnet_run
    other = run["folder"] / "seed1"
    torch.manual_seed(1)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    checkpoint = load_checkpoint(run["checkpoint"]) | {"state_dict": model.state_dict()}
    other.mkdir()
    torch.save(checkpoint, other / "checkpoint.pt")
    render_gradcam(other / "checkpoint.pt", index_path, other, num_images=run["num_images"])
    first = np.asarray(Image.open(run["folder"] / "figs" / "gradcam_layers.png"))
    second = np.asarray(Image.open(other / "gradcam_layers.png"))
    assert first.shape == second.shape and (first != second).any(axis=-1).mean() > 0.01


def test_blank_maps_are_flagged_panels(index_path, tmp_path):
    checkpoint, predictions = make_checkpoint(tmp_path, index_path, "resnet18", 0, 32, blank=True)
    render_gradcam(checkpoint, index_path, tmp_path, num_images=2)
    with np.load(tmp_path / "gradcam.npz") as npz:
        for layer in npz["layers"]:
            assert npz[f"flags_{layer}"].all() and not npz[f"cam_{layer}"].any()
    pixels = np.asarray(Image.open(tmp_path / "gradcam_layers.png").convert("RGB"))
    assert (np.abs(pixels.astype(int) - 191) <= 2).all(
        -1
    ).mean() > 0.2  # the grey (0.75) panels fill much of the figure

    render_failures(checkpoint, index_path, predictions, tmp_path, k=2)
    report = json.loads((tmp_path / "failures.json").read_text())
    assert len(report["failures"]) == 2 and all(f["energy_in_mask_pred"] is None for f in report["failures"])
    assert report["energy_in_mask"]["misclassified"] == {"mean": None, "std": None, "n": 0}


def test_no_misclassifications_and_bad_layers(resnet_run, index_path, tmp_path):
    run = resnet_run
    predictions = pd.read_csv(run["predictions"])
    predictions["pred"] = predictions["label"]
    predictions.to_csv(tmp_path / "predictions.csv", index=False)
    paths = render_failures(run["checkpoint"], index_path, tmp_path / "predictions.csv", tmp_path, layer="layer3")
    assert (tmp_path / "failures.png").is_file() and tmp_path / "failures.json" in paths
    assert json.loads((tmp_path / "failures.json").read_text())["failures"] == []
    with np.load(tmp_path / "failures.npz") as npz:
        assert npz["cam_pred"].shape == (0, 32, 32) and npz["test_correct"].shape == (30,)
    with pytest.raises(UserError, match="'layer5'"):
        render_gradcam(run["checkpoint"], index_path, tmp_path, layers=["layer4", "layer5"])
    with pytest.raises(UserError, match="'layer9'"):
        render_failures(run["checkpoint"], index_path, run["predictions"], tmp_path, layer="layer9")


def test_dataset_without_masks(resnet_run, index_path, tmp_path, monkeypatch):
    monkeypatch.setattr(ArraySource, "mask", lambda self, i: None)  # as CIFAR-10 and image folders
    paths = render_failures(
        resnet_run["checkpoint"], index_path, resnet_run["predictions"], tmp_path, k=2, layer="layer3"
    )
    assert [p.name for p in paths] == ["failures.png", "failures.npz", "failures.json"]
    report = json.loads((tmp_path / "failures.json").read_text())
    assert report["energy_in_mask"] is None and report["failures"][0]["energy_in_mask_true"] is None


def test_colour_bar_label_fits_a_one_row_figure(tmp_path):
    """One failure case: the colour bar is short, and its label must still lie inside the figure."""
    from convscope.figures.drawing import cam_colorbar, grid

    fig, axes = grid(1, 3, "model: most confident test misclassifications\nGrad-CAM at layer4", title_lines=2)
    for ax in axes.ravel():
        ax.imshow(np.zeros((32, 32)))
        ax.set_title("pred: x\n0.93", fontsize=7)
    cam_colorbar(fig, axes[:, 1:], "jet")
    fig.savefig(tmp_path / "one-case.png", dpi=150)  # lays the figure out
    label = fig.axes[-1].yaxis.label.get_window_extent()
    assert fig.bbox.y0 <= label.y0 and label.y1 <= fig.bbox.y1, label
