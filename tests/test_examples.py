"""The profiles of config/examples/ run end to end as shipped, on tiny datasets fabricated in the real formats.

Only what a tiny run needs is overridden (dataset root, epochs, batch sizes, figure image counts, the
explanation metrics' sizes): the architectures, weights, input sizes and preprocessing are the shipped ones.
The ImageNet weights are randomly initialised 1000-class torchvision models saved as state dicts (the format
of torchvision's files) under the file names the profiles expect, in a TORCH_HOME of the test's own.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml
from conftest import REPO, UNTRAINED, tiny_config, write_yaml
from fabricate import CIFAR_CLASSES, write_caltech, write_cifar
from PIL import Image

from convscope import paths
from convscope.config import ModelConfig, load_config, read_config
from convscope.errors import UserError
from convscope.figures.features import render_feature_maps
from convscope.models import build_model, imagenet_weights_path, model_kwargs
from convscope.training import checkpoint_of, load_checkpoint, train_model
from convscope.transforms import build_transform, denormalise

EXAMPLES = REPO / "config" / "examples"
CIFAR_PROFILE = "cifar10-resnet18.yaml"
CALTECH_PROFILE = "caltech256-resnet50-inceptionv3.yaml"
GRAY_PROFILE = "caltech256-inceptionv3-grayscale.yaml"
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
FILE_SEED = 1234  # the fabricated "ImageNet" weights: not the init a model with seed 0 would get
FIRST_CONV = {"resnet18": "conv1.weight", "resnet50": "conv1.weight", "inception_v3": "Conv2d_1a_3x3.conv.weight"}
# One folder name full of Markdown and Typst specials: the report must print it as it is.
SPECIAL = "a*b_c#d$e@f<g"
CALTECH_FOLDERS = ["001.ak47", f"002.{SPECIAL}", "257.clutter"]
GRAYSCALE = f"002.{SPECIAL}/002_0003.jpg"
slow = pytest.mark.slow


def shipped(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / name).read_text())


def save_imagenet_weights(torch_home: Path, arch: str) -> dict[str, torch.Tensor]:
    """A randomly initialised 1000-class ``arch`` saved where ``weights: imagenet`` looks under ``torch_home``."""
    torch.manual_seed(FILE_SEED)
    kwargs = {"aux_logits": True, "init_weights": True} if arch == "inception_v3" else {}
    state = torchvision.models.get_model(arch, weights=None, num_classes=1000, **kwargs).state_dict()
    path = torch_home / "hub" / "checkpoints" / imagenet_weights_path(arch).name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def changed_keys(before, after, prefix: str = "") -> set[str]:
    """Dotted keys (list items as [*]) whose values differ between two nested configs."""
    if isinstance(before, dict) and isinstance(after, dict):
        return set().union(
            *(
                changed_keys(before.get(k), after.get(k), f"{prefix}.{k}".lstrip("."))
                for k in before.keys() | after.keys()
            )
        )
    if (
        isinstance(before, list)
        and isinstance(after, list)
        and len(before) == len(after)
        and all(isinstance(b, dict) for b in before)
    ):
        return set().union(*(changed_keys(b, a, f"{prefix}[*]") for b, a in zip(before, after)))
    return set() if before == after else {prefix}


# The explanation job at its defaults (three methods, 16 steps, ROAD on 10 images: one sparse solve per image,
# fraction and order at 224-299 px) would take most of a profile's build; tests/test_explain.py covers the metrics.
TINY_EXPLANATIONS = {"methods": ["gradcam"], "steps": 4, "road_images": 1}


def build(workdir: Path, profile: dict, torch_home: Path, targets: tuple[str, ...] = ()) -> None:
    """Writes the profile as the workflow's config in ``workdir`` and runs snakemake there on 2 cores.

    ``targets`` (workflow paths) replace the default target, the rendered report.
    """
    write_yaml(workdir / "config" / "config.yaml", profile)
    if (REPO / "report").is_dir():  # the report's sources, as the default target builds the report too
        shutil.copytree(REPO / "report", workdir / "report", ignore=shutil.ignore_patterns("_*", ".*"))
        shutil.copy(REPO / "report/_quarto.yml", workdir / "report")
    env = {**os.environ, "TORCH_HOME": str(torch_home)}
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--cores",
        "2",
        *targets,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-4000:]


def read_stages(workdir: Path, model: str) -> dict[str, str]:
    with open(workdir / f"figures/{model}/architecture/stages.csv", newline="") as f:
        return {row["layer"]: row["output_shape"] for row in csv.DictReader(f)}


def assert_checkpoint(
    workdir: Path, model: str, arch: str, classes: list[str], input_size: int, resize: int, saved: dict
) -> dict:
    checkpoint = load_checkpoint(workdir / f"results/{model}/checkpoint.pt")
    assert (checkpoint["arch"], checkpoint["num_classes"], checkpoint["classes"]) == (arch, len(classes), classes)
    assert (checkpoint["input_size"], checkpoint["mean"], checkpoint["std"]) == (
        input_size,
        IMAGENET_MEAN,
        IMAGENET_STD,
    )
    assert checkpoint["config"]["weights"] == "imagenet" and checkpoint["config"]["preprocessing"]["resize"] == resize
    assert checkpoint["config"]["preprocessing"]["crop"] == "random"
    # The backbone came from the weights file: one epoch at a fine-tuning lr leaves every backbone tensor
    # close to the file's (cosine ~1; the first conv, right before a BatchNorm, moves most), whereas the
    # init the model would get without the file (same seed) is unrelated to it (cosine ~0).
    config = dataclasses.replace(ModelConfig.from_dict(checkpoint["config"]), weights=None)
    torch.manual_seed(config.seed)
    fresh = build_model(config, len(classes)).state_dict()
    trained = checkpoint["state_dict"]
    backbone = [
        k for k, v in trained.items() if v.dim() > 1 and k in saved and saved[k].shape == v.shape
    ]  # conv kernels
    assert FIRST_CONV[arch] in backbone and not any(k.startswith(("fc.", "AuxLogits.fc.")) for k in backbone)
    cosine = {
        source: torch.stack(
            [torch.nn.functional.cosine_similarity(trained[k].flatten(), weights[k].flatten(), dim=0) for k in backbone]
        )
        for source, weights in (("file", saved), ("fresh", fresh))
    }
    assert cosine["file"].mean() > 0.9 and cosine["fresh"].abs().mean() < 0.1
    assert (cosine["file"] > cosine["fresh"].abs() + 0.3).all()
    assert not torch.equal(trained[FIRST_CONV[arch]], saved[FIRST_CONV[arch]])  # and it was trained
    return checkpoint


def assert_metrics(workdir: Path, model: str, counts: dict[str, int]) -> None:
    metrics = json.loads((workdir / f"results/{model}/metrics.json").read_text())
    assert set(metrics["splits"]) == {"val", "test"}
    for split, n in counts.items():
        values = metrics["splits"][split]
        assert values["n"] == n and 0 <= values["top1"] <= values["top5"] <= 1


def assert_gradcam(workdir: Path, model: str, layers: list[str], n: int, size: int) -> None:
    with np.load(workdir / f"figures/{model}/gradcam/gradcam.npz") as arrays:
        assert list(arrays["layers"]) == layers
        assert arrays["inputs"].shape == (n, 3, size, size)
        for layer in layers:
            assert arrays[f"cam_{layer}"].shape == (n, size, size)
    assert (workdir / f"figures/{model}/gradcam/gradcam_layers.png").stat().st_size > 0


# CIFAR-10: ResNet18 from ImageNet weights at 224 px.


@pytest.fixture(scope="module")
def cifar_build(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cifar_example")
    write_cifar(tmp / "raw" / "cifar-10-batches-py", per_batch=10)  # one image per class per batch file
    saved = save_imagenet_weights(tmp / "torch", "resnet18")
    profile = shipped(CIFAR_PROFILE)
    tiny = copy.deepcopy(profile)
    tiny["dataset"]["root"] = str(tmp / "raw")
    tiny["models"][0].update(epochs=1, batch_size=16)
    tiny["figures"]["gradcam"]["num_images"] = 3
    # One epoch on 50 images may classify no test image correctly; tests/test_figures_cam.py covers correct_only.
    tiny["figures"]["gradcam"]["correct_only"] = False
    tiny["explanations"] = TINY_EXPLANATIONS
    assert changed_keys(profile, tiny) == {
        "dataset.root",
        "models[*].epochs",
        "models[*].batch_size",
        "figures.gradcam.num_images",
        "figures.gradcam.correct_only",
        "explanations",
    }
    build(tmp / "work", tiny, tmp / "torch")
    return tmp / "work", saved


@slow
def test_cifar10_resnet18_profile_trains_from_the_imagenet_file(cifar_build):
    workdir, saved = cifar_build
    checkpoint = assert_checkpoint(workdir, "resnet18", "resnet18", CIFAR_CLASSES, 224, 256, saved)
    assert checkpoint["state_dict"]["fc.weight"].shape == (10, 512) and len(checkpoint["history"]) == 1
    # 50 training rows: 5 per class, one of each held out for validation; the 10 test rows are test.
    assert_metrics(workdir, "resnet18", {"val": 10, "test": 10})


@slow
def test_cifar10_resnet18_profile_figures(cifar_build):
    workdir, _ = cifar_build
    figures = workdir / "figures/resnet18"
    stages = read_stages(workdir, "resnet18")
    assert (stages["conv1"], stages["layer4"], stages["fc"]) == ("64×112×112", "512×7×7", "10")
    assert "(conv1): Conv2d(3, 64, kernel_size=(7, 7)" in (figures / "architecture/architecture.txt").read_text()
    with np.load(figures / "filters/filters_first.npz") as first:
        assert str(first["layer"]) == "conv1" and first["weight"].shape == (64, 3, 7, 7)
    with np.load(figures / "filters/filters_layer4.1.conv2.npz") as deep:
        assert deep["channel_mean"].shape == (512, 3, 3)
    assert (figures / "filters/filters_first.png").exists() and (
        figures / "filters/filters_layer4.1.conv2.png"
    ).exists()
    with np.load(figures / "feature_maps/feature_maps.npz") as maps:
        assert list(maps["layers"]) == ["layer4.1.conv2", "layer4"] and len(maps["indices"]) == 1
        assert maps["layer4.1.conv2/top_maps"].shape == (1, 8, 7, 7)
    assert_gradcam(workdir, "resnet18", ["layer4"], 3, 224)
    failures = json.loads((figures / "failures/failures.json").read_text())
    assert failures["k"] == 1 and failures["layer"] == "layer4" and len(failures["failures"]) <= 1


# Caltech-256: ResNet50 (256/224) and InceptionV3 (342/299, aux logits) from ImageNet weights.


@pytest.fixture(scope="module")
def caltech_build(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("caltech_example")
    root = tmp / "256_ObjectCategories"
    # Five per class: with the profile's fractions one goes to test and one to validation, three to training.
    write_caltech(root, CALTECH_FOLDERS, per_class=5, grayscale=GRAYSCALE)
    saved = {arch: save_imagenet_weights(tmp / "torch", arch) for arch in ("resnet50", "inception_v3")}
    profile = shipped(CALTECH_PROFILE)
    tiny = copy.deepcopy(profile)
    tiny["dataset"]["root"] = str(root)
    for model in tiny["models"]:
        # 9 training images in batches of 4 end in a batch of one, which BatchNorm cannot train on at
        # Inception's 1×1 aux head: training drops it.
        model.update(epochs=1, batch_size=4)
    tiny["figures"]["gradcam"]["num_images"] = 3
    tiny["figures"]["feature_maps"]["num_images"] = 1
    tiny["explanations"] = TINY_EXPLANATIONS
    assert changed_keys(profile, tiny) == {
        "dataset.root",
        "models[*].epochs",
        "models[*].batch_size",
        "figures.gradcam.num_images",
        "figures.feature_maps.num_images",
        "explanations",
    }
    build(tmp / "work", tiny, tmp / "torch")
    return tmp / "work", saved


@slow
def test_caltech256_profile_cleans_names_and_fine_tunes_both_models(caltech_build):
    workdir, saved = caltech_build
    index = json.loads((workdir / "data/caltech256/index.json").read_text())
    classes = ["ak47", SPECIAL, "clutter"]
    assert index["classes"] == classes and GRAYSCALE in sum(index["refs"].values(), [])
    assert [len(index["refs"][s]) for s in ("train", "val", "test")] == [9, 3, 3]
    resnet = assert_checkpoint(workdir, "resnet50", "resnet50", classes, 224, 256, saved["resnet50"])
    inception = assert_checkpoint(workdir, "inception_v3", "inception_v3", classes, 299, 342, saved["inception_v3"])
    assert resnet["state_dict"]["fc.weight"].shape == (3, 2048)
    assert inception["config"]["aux_logits"] and inception["state_dict"]["AuxLogits.fc.weight"].shape == (3, 768)
    for model in ("resnet50", "inception_v3"):
        assert_metrics(workdir, model, {"val": 3, "test": 3})


@slow
def test_caltech256_profile_stage_tables_and_gradcam(caltech_build):
    workdir, _ = caltech_build
    resnet = read_stages(workdir, "resnet50")
    assert [resnet[f"layer{i}"] for i in range(1, 5)] == ["256×56×56", "512×28×28", "1024×14×14", "2048×7×7"]
    inception = read_stages(workdir, "inception_v3")
    assert (inception["Mixed_5d"], inception["Mixed_6e"], inception["Mixed_7c"]) == (
        "288×35×35",
        "768×17×17",
        "2048×8×8",
    )
    assert inception["AuxLogits"] == "not called" and inception["fc"] == "3"
    assert_gradcam(workdir, "resnet50", ["layer1", "layer2", "layer3", "layer4"], 3, 224)
    assert_gradcam(workdir, "inception_v3", ["Mixed_5d", "Mixed_6e", "Mixed_7c"], 3, 299)
    with np.load(workdir / "figures/inception_v3/feature_maps/feature_maps.npz") as maps:
        assert list(maps["layers"]) == ["Conv2d_4a_3x3", "Mixed_5d", "Mixed_6e", "Mixed_7c"]  # AuxLogits skipped
    for model, layer in (("resnet50", "layer4"), ("inception_v3", "Mixed_7c")):
        assert json.loads((workdir / f"figures/{model}/failures/failures.json").read_text())["layer"] == layer


@slow
def test_caltech256_report_prints_class_names_literally(caltech_build):
    workdir, _ = caltech_build
    html = (workdir / "report/_output/report.html").read_text()
    assert (workdir / "report/_output/report.pdf").read_bytes().startswith(b"%PDF-")
    assert SPECIAL.replace("<", "&lt;") in html  # in the dataset section's class list
    assert "Table 1: " in html and "Figure 1: " in html and "resnet50" in html and "inception_v3" in html


# Caltech-256, the reference report's own recipe: InceptionV3 at 224 px (no aux head) on grayscale images.


@pytest.fixture(scope="module")
def caltech_gray_build(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("caltech_gray_example")
    root = tmp / "256_ObjectCategories"
    write_caltech(root, CALTECH_FOLDERS, per_class=5, grayscale=GRAYSCALE)
    saved = save_imagenet_weights(tmp / "torch", "inception_v3")  # with the aux head, as torchvision's file
    profile = shipped(GRAY_PROFILE)
    tiny = copy.deepcopy(profile)
    tiny["dataset"]["root"] = str(root)
    tiny["models"][0].update(epochs=1, batch_size=4)
    tiny["figures"]["gradcam"]["num_images"] = 2
    tiny["figures"]["feature_maps"]["num_images"] = 1
    tiny["explanations"] = TINY_EXPLANATIONS
    assert changed_keys(profile, tiny) == {
        "dataset.root",
        "models[*].epochs",
        "models[*].batch_size",
        "figures.gradcam.num_images",
        "figures.feature_maps.num_images",
        "explanations",
    }
    # Every job up to the report's sources; rendering them is the same as for the other Caltech-256 profile.
    build(tmp / "work", tiny, tmp / "torch", targets=(paths.REPORT_VARIABLES,))
    return tmp / "work", saved


@slow
def test_caltech256_grayscale_profile_fine_tunes_inception_at_224_on_gray_images(caltech_gray_build):
    workdir, saved = caltech_gray_build
    model = "inception_v3_gray"
    classes = ["ak47", SPECIAL, "clutter"]
    checkpoint = assert_checkpoint(workdir, model, "inception_v3", classes, 224, 256, saved)
    assert checkpoint["config"]["preprocessing"]["grayscale"] and not checkpoint["config"]["aux_logits"]
    state = checkpoint["state_dict"]
    assert state["fc.weight"].shape == (3, 2048) and not any(key.startswith("AuxLogits.") for key in state)
    assert_metrics(workdir, model, {"val": 3, "test": 3})
    stages = read_stages(workdir, model)
    assert (stages["Mixed_5d"], stages["Mixed_6e"], stages["Mixed_7c"]) == ("288×25×25", "768×12×12", "2048×5×5")
    assert "AuxLogits" not in stages and stages["fc"] == "3"
    assert_gradcam(workdir, model, ["Mixed_5d", "Mixed_6e", "Mixed_7c"], 2, 224)
    # The test images the model explained were gray: their three denormalised channels are equal.
    with np.load(workdir / f"figures/{model}/gradcam/gradcam.npz") as arrays:
        images = arrays["inputs"] * np.reshape(IMAGENET_STD, (3, 1, 1)) + np.reshape(IMAGENET_MEAN, (3, 1, 1))
    assert np.abs(images - images[:, :1]).max() < 1e-5 and images.std() > 0.05
    generated = " ".join(path.read_text() for path in (workdir / paths.REPORT_GENERATED).rglob("*.qmd"))
    assert "grayscale, replicated to 3 channels" in generated


def test_grayscale_profile_gives_the_model_three_equal_channels(tmp_path):
    profile = shipped(GRAY_PROFILE)
    profile["dataset"]["root"] = str(tmp_path)
    config = load_config(profile).models[0]
    assert (config.input_size, config.aux_logits, config.preprocessing.grayscale) == (224, False, True)
    colour = dataclasses.replace(config, preprocessing=dataclasses.replace(config.preprocessing, grayscale=False))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 260, 3), dtype=np.uint8))
    # The model as training builds it from ImageNet weights (transform_input on), without loading a file.
    network = torchvision.models.get_model(config.arch, num_classes=3, **model_kwargs(config)).eval()
    seen = []
    network.Conv2d_1a_3x3.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    spread = {}
    for preprocessing, train in ((config, True), (config, False), (colour, False)):
        inputs = build_transform(preprocessing, train)(image)[None]
        assert inputs.shape == (1, 3, 224, 224)
        with torch.no_grad():
            network(inputs)
        pixels = denormalise(inputs, config)
        spread[preprocessing.preprocessing.grayscale, train] = (
            (pixels - pixels[:, :1]).abs().max().item(),  # between the channels of the image
            (seen[-1] - seen[-1][:, :1]).abs().max().item(),  # between the channels the first convolution reads
        )
    # Per-channel ImageNet normalisation differs, but the image and what the network's first layer sees are gray.
    assert max(max(spread[True, True]), max(spread[True, False])) < 1e-5
    assert min(spread[False, False]) > 0.5  # the same image in colour: the check can fail


# The profiles as shipped, and the package bugs they exposed (fast: no workflow run).


@pytest.mark.parametrize("name", [CIFAR_PROFILE, CALTECH_PROFILE, GRAY_PROFILE])
def test_shipped_profile_fails_only_on_the_missing_dataset(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/raw here
    with pytest.raises(
        UserError, match=r"^config dataset\.root: folder 'data/raw/[\w-]+' not found; put the dataset there"
    ):
        read_config(EXAMPLES / name)
    profile = shipped(name)
    (tmp_path / profile["dataset"]["root"]).mkdir(parents=True)
    config = read_config(EXAMPLES / name)
    assert all(model.weights == "imagenet" for model in config.models)
    text = (EXAMPLES / name).read_text()
    for model in config.models:  # the comments name the files that weights: imagenet reads
        assert imagenet_weights_path(model.arch).name in text


def test_last_training_batch_of_one_image_is_dropped(tiny_index, tmp_path):
    # 110 training images in batches of 109: a batch of one would reach resnet18's layer4 (1×1 at 32 px)
    # and BatchNorm would refuse it ("Expected more than 1 value per channel when training").
    checkpoint = train_model(tiny_config(epochs=1, batch_size=109), tiny_index, tmp_path / "checkpoint.pt", threads=1)
    assert len(checkpoint["history"]) == 1 and np.isfinite(checkpoint["history"][0]["train_loss"])


def test_weights_without_batchnorm_counters_load(tmp_path):
    # Weight files saved before PyTorch 0.4 have no num_batches_tracked buffers; torch loads them, so must we.
    torch.manual_seed(FILE_SEED)
    state = {
        k: v
        for k, v in torchvision.models.resnet18(num_classes=1000).state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    torch.save(state, tmp_path / "old.pth")
    config = tiny_config(weights=str(tmp_path / "old.pth"))
    model = build_model(config, 10)
    assert torch.equal(model.state_dict()["conv1.weight"], state["conv1.weight"]) and model.fc.out_features == 10


def test_inception_feature_maps_skip_the_aux_head(tiny_index, tmp_path):
    config = load_config({"models": [{"name": "inc", "arch": "inception_v3", "input_size": 299}]}).models[0]
    assert config.aux_logits
    torch.manual_seed(0)
    model = build_model(config, 10)
    classes = json.loads(Path(tiny_index).read_text())["classes"]
    checkpoint = checkpoint_of(model, config, classes, epoch=0, history=[], run=UNTRAINED)
    torch.save(checkpoint, tmp_path / "checkpoint.pt")
    render_feature_maps(tmp_path / "checkpoint.pt", tiny_index, tmp_path / "default", num_images=1, top_k=2)
    with np.load(tmp_path / "default/feature_maps.npz") as maps:
        assert list(maps["layers"]) == ["Conv2d_4a_3x3", "Mixed_5d", "Mixed_6e", "Mixed_7c"]
    with pytest.raises(UserError, match="layer 'AuxLogits' does not run when the model evaluates"):
        render_feature_maps(
            tmp_path / "checkpoint.pt", tiny_index, tmp_path / "aux", layers=["AuxLogits"], num_images=1
        )
