"""Figure families on tiny fabricated checkpoints: files, and that the numbers behind the pictures are right."""

from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from convscope.config import RuntimeConfig, load_config
from convscope.data import open_split, prepare_dataset
from convscope.errors import UserError
from convscope.evaluation import calibration, evaluate_model, load_model
from convscope.figures.architecture import render_architecture
from convscope.figures.features import render_feature_maps
from convscope.figures.filters import render_filters
from convscope.figures.training import render_training
from convscope.models import build_model, conv_layers
from convscope.transforms import build_transform

DATASET = {"shapes": {"image_size": 32, "train_per_class": 4, "test_per_class": 2}}
SIZES = {"resnet18": 32, "inception_v3": 80, "mobilenet_v3_small": 32}  # inception: its minimum is 75 without aux


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    prepare_dataset(load_config({"dataset": DATASET}).dataset, out)
    return out / "index.json"


def make_checkpoint(path, index, arch: str, seed: int = 0):
    """A checkpoint with every contract key, of an untrained model, saved like training saves one."""
    extra = {"aux_logits": False} if arch == "inception_v3" else {}
    config = load_config(
        {"dataset": DATASET, "models": [{"name": arch, "arch": arch, "input_size": SIZES[arch], **extra}]}
    ).models[0]
    classes = open_split(index, "train").classes
    torch.manual_seed(seed)
    model = build_model(config, len(classes))
    history = [
        {
            "epoch": e,
            "train_loss": 2.3 / e,
            "train_top1": 0.1 * e,
            "train_top5": 0.5,
            "val_loss": 2.4 / e,
            "val_top1": 0.1 * e,
            "val_top5": 0.5,
            "lr": 0.01,
            "seconds": 1.0,
        }
        for e in (1, 2)
    ]
    torch.save(
        {
            "state_dict": model.state_dict(),
            "arch": arch,
            "num_classes": len(classes),
            "classes": classes,
            "input_size": config.input_size,
            "mean": list(config.preprocessing.mean),
            "std": list(config.preprocessing.std),
            "epoch": 2,
            "config": dataclasses.asdict(config),
            "history": history,
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, index):
    out = tmp_path_factory.mktemp("checkpoints")
    return {arch: make_checkpoint(out / f"{arch}.pt", index, arch) for arch in SIZES}


def assert_pngs(files):
    pngs = [f for f in files if f.suffix == ".png"]
    assert pngs
    for path in pngs:
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) > 100, path


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("arch", ["resnet18", "inception_v3", "mobilenet_v3_small"])
def test_architecture_text_and_stage_table(arch, checkpoints, index, tmp_path):
    files = render_architecture(checkpoints[arch], index, tmp_path)
    assert [f.name for f in files] == ["architecture.txt", "stages.md", "stages.csv"]
    _, _, model = load_model(checkpoints[arch])
    assert (tmp_path / "architecture.txt").read_text() == f"{model}\n"
    rows = {row["layer"]: row for row in read_csv(tmp_path / "stages.csv")}
    last = {"resnet18": "layer4", "inception_v3": "Mixed_7c", "mobilenet_v3_small": "features.12"}[arch]
    # The expected shape from running the stages by hand, up to the last conv stage.
    x = torch.zeros(1, 3, SIZES[arch], SIZES[arch])
    with torch.no_grad():
        for name, child in model.named_children():
            x = child(x)
            if last.startswith(name):
                break
    if arch == "mobilenet_v3_small":
        assert list(rows)[:13] == [f"features.{i}" for i in range(13)]
    assert rows[last]["output_shape"] == "×".join(map(str, x.shape[1:]))
    assert int(rows[last]["parameters"]) == sum(p.numel() for p in model.get_submodule(last).parameters())
    if arch == "resnet18":
        assert rows["layer4"]["output_shape"] == "512×1×1"  # 32 px halved five times
        assert "2 blocks (BasicBlock)" in rows["layer4"]["details"] and "stride 2" in rows["layer4"]["details"]
        assert rows["conv1"]["details"] == "Conv2d; kernel 7×7; stride 2"
    assert f"| {last} |" in (tmp_path / "stages.md").read_text()


@pytest.mark.parametrize(
    "arch, first, deep",
    [
        ("resnet18", "conv1", "layer4.1.conv2"),
        ("inception_v3", "Conv2d_1a_3x3.conv", "Mixed_7c.branch3x3dbl_3b.conv"),
        ("mobilenet_v3_small", "features.0.0", "features.11.block.1.0"),
    ],
)
def test_filters_show_the_layer_weights(arch, first, deep, checkpoints, index, tmp_path):
    files = render_filters(checkpoints[arch], index, tmp_path)
    assert_pngs(files)
    _, _, model = load_model(checkpoints[arch])
    layers = conv_layers(model)
    saved = np.load(tmp_path / "filters_first.npz")
    assert str(saved["layer"]) == first
    np.testing.assert_array_equal(saved["weight"], layers[first].weight.detach().numpy())
    assert saved["grid"].min() == 0 and saved["grid"].max() == 1  # one joint min-max over all filters
    deep_saved = np.load(tmp_path / f"filters_{deep}.npz")
    np.testing.assert_allclose(
        deep_saved["channel_mean"], layers[deep].weight.detach().mean(dim=1).numpy(), rtol=0, atol=0
    )


def test_first_filter_grid_follows_the_weights(index, checkpoints, tmp_path):
    other = make_checkpoint(tmp_path / "seed1.pt", index, "resnet18", seed=1)
    grids, pixels = [], []
    for name, checkpoint in (("a", checkpoints["resnet18"]), ("b", other)):
        render_filters(checkpoint, index, tmp_path / name, layers=["layer1.0.conv1"])
        grids.append(np.load(tmp_path / name / "filters_first.npz")["grid"])
        pixels.append(np.asarray(Image.open(tmp_path / name / "filters_first.png").convert("RGB")))
    assert grids[0].shape == grids[1].shape and not np.array_equal(grids[0], grids[1])
    assert not np.array_equal(pixels[0], pixels[1])


def test_unknown_filter_layer_is_named(checkpoints, index, tmp_path):
    with pytest.raises(
        UserError, match=r"unknown conv layer 'layer9\.conv'.*valid conv layers: conv1, layer1\.0\.conv1"
    ):
        render_filters(checkpoints["resnet18"], index, tmp_path, layers=["layer9.conv"])
    assert not list(tmp_path.iterdir())  # validated before anything is written


@pytest.mark.parametrize(
    "arch, settings, expected_layers",
    [
        ("resnet18", {"num_images": 2}, ["layer1", "layer2", "layer3", "layer4"]),  # each figure takes ~1 s to draw
        ("inception_v3", {"num_images": 1, "top_k": 4}, ["Conv2d_4a_3x3", "Mixed_5d", "Mixed_6e", "Mixed_7c"]),
    ],
)
def test_feature_maps_show_the_most_active_channels(arch, settings, expected_layers, checkpoints, index, tmp_path):
    files = render_feature_maps(checkpoints[arch], index, tmp_path, **settings)
    num_images, top_k = settings["num_images"], settings.get("top_k", 8)
    assert [f.name for f in files] == [f"feature_maps_{i}.png" for i in range(num_images)] + ["feature_maps.npz"]
    assert_pngs(files)
    saved = np.load(tmp_path / "feature_maps.npz")
    assert list(saved["layers"]) == expected_layers
    source = open_split(index, "test")
    assert [source.labels[i] for i in saved["indices"]] == list(range(num_images))  # first image of each class

    _, config, model = load_model(checkpoints[arch])
    transform = build_transform(config, train=False)
    inputs = torch.stack([transform(source.load(int(i))) for i in saved["indices"]])
    recorded = {}
    hooks = [
        model.get_submodule(layer).register_forward_hook(
            lambda m, a, out, layer=layer: recorded.__setitem__(layer, out.clone())
        )
        for layer in expected_layers
    ]
    try:
        with torch.no_grad():
            predicted = model(inputs).argmax(dim=1)
    finally:
        for hook in hooks:
            hook.remove()
    np.testing.assert_array_equal(saved["predictions"], predicted.numpy())
    for layer in expected_layers:
        means = recorded[layer].mean(dim=(2, 3))
        expected = set(map(tuple, means.topk(top_k, dim=1).indices.sort(dim=1).values.tolist()))
        channels = saved[f"{layer}/top_channels"]
        assert channels.shape == (num_images, top_k)
        assert set(map(tuple, np.sort(channels, axis=1).tolist())) == expected
        for n in range(num_images):  # the listed means are the channels' means, largest first
            np.testing.assert_allclose(
                saved[f"{layer}/top_means"][n], means[n, channels[n]].numpy(), rtol=1e-5, atol=1e-6
            )
            assert (np.diff(saved[f"{layer}/top_means"][n]) <= 0).all()
            np.testing.assert_allclose(
                saved[f"{layer}/top_maps"][n], recorded[layer][n, channels[n]].numpy(), rtol=1e-5, atol=1e-6
            )
    assert all(not m._forward_hooks for m in model.modules())


def test_unknown_feature_layer_is_named(checkpoints, index, tmp_path):
    with pytest.raises(
        UserError, match=r"unknown layer 'layer5' in ResNet; did you mean 'layer4'\? valid layers: .*layer4"
    ):
        render_feature_maps(checkpoints["resnet18"], index, tmp_path, layers=["layer5"])


@pytest.mark.parametrize("arch", ["resnet18", "inception_v3"])
def test_training_figures_from_real_metrics(arch, checkpoints, index, tmp_path):
    metrics = tmp_path / "metrics.json"
    evaluate_model(
        checkpoints[arch],
        index,
        metrics,
        tmp_path / "predictions.csv",
        tmp_path / "timings.json",
        RuntimeConfig.defaults(device="cpu"),
    )
    history = tmp_path / "history.json"  # as the train step writes it beside the checkpoint
    history.write_text(json.dumps(torch.load(checkpoints[arch], weights_only=True)["history"]))
    files = render_training(history, metrics, tmp_path / "figs")
    assert [f.name for f in files] == [
        "training_curves.png",
        "training_curves.csv",
        "confusion_matrix.png",
        "confusion_matrix.npz",
        "per_class_accuracy.png",
        "per_class_accuracy.csv",
        "reliability.png",
        "reliability.csv",
    ]
    assert_pngs(files)
    test = json.loads(metrics.read_text())["splits"]["test"]
    # metrics.json carries the calibration of the confidences predictions.csv lists (those rounded to 6 decimals).
    predictions = [row for row in read_csv(tmp_path / "predictions.csv") if row["split"] == "test"]
    confidence = np.array([float(row["confidence"]) for row in predictions])
    correct = np.array([row["correct"] == "True" for row in predictions])
    bins = np.clip(np.ceil(confidence * 15).astype(int), 1, 15) - 1
    ece = sum(abs(correct[bins == m].mean() - confidence[bins == m].mean()) * (bins == m).mean() for m in set(bins))
    assert test["calibration"]["ece"] == pytest.approx(ece, abs=1e-5)
    assert [b["count"] for b in test["calibration"]["bins"]] == np.bincount(bins, minlength=15).tolist()
    assert [int(row["count"]) for row in read_csv(tmp_path / "figs" / "reliability.csv")] == np.bincount(
        bins, minlength=15
    ).tolist()
    saved = np.load(tmp_path / "figs" / "confusion_matrix.npz")
    np.testing.assert_array_equal(saved["counts"], test["confusion_matrix"])
    np.testing.assert_allclose(saved["normalised"].sum(axis=1), 1.0)
    rows = read_csv(tmp_path / "figs" / "per_class_accuracy.csv")
    accuracies = [float(row["accuracy"]) for row in rows]
    assert accuracies == sorted(accuracies) and len(rows) == 10
    assert {row["class"]: float(row["accuracy"]) for row in rows} == test["per_class_accuracy"]
    assert [int(row["epoch"]) for row in read_csv(tmp_path / "figs" / "training_curves.csv")] == [1, 2]


def test_training_figures_with_many_classes(checkpoints, tmp_path):
    # 257 classes (Caltech-256 size): no annotations or class ticks, the 20 worst classes as bars.
    history = torch.load(checkpoints["resnet18"], weights_only=True)["history"]
    (tmp_path / "history.json").write_text(json.dumps(history))
    classes = [f"class{i:03d}" for i in range(257)]
    counts = np.diag(np.arange(1, 258)) + 1
    logits = torch.randn(int(counts.sum()), 257)
    metrics = {
        "model": "many",
        "arch": "resnet18",
        "classes": classes,
        "splits": {
            "test": {
                "n": int(counts.sum()),
                "top1": 0.5,
                "top5": 0.9,
                "confusion_matrix": counts.tolist(),
                "per_class_accuracy": {c: float(counts[i, i] / counts[i].sum()) for i, c in enumerate(classes)},
                "calibration": calibration(logits, logits.argmax(1)),
            }
        },
    }
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    files = render_training(tmp_path / "history.json", tmp_path / "metrics.json", tmp_path / "figs")
    assert_pngs(files)
    np.testing.assert_allclose(np.load(tmp_path / "figs" / "confusion_matrix.npz")["normalised"].sum(axis=1), 1.0)
    assert len(read_csv(tmp_path / "figs" / "per_class_accuracy.csv")) == 257
    # The family draws from JSON alone: its job never imports torch (about 4 s of start-up).
    code = (
        "import sys; from convscope.figures import render\n"
        "render('training', {'history': sys.argv[1], 'metrics': sys.argv[2]}, sys.argv[3], {})\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')))"
    )
    args = [tmp_path / "history.json", tmp_path / "metrics.json", tmp_path / "again"]
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, check=True)
    assert result.stdout.splitlines()[-1] == "[]" and (tmp_path / "again" / "reliability.png").is_file()


def test_titles_wider_than_the_figure_are_wrapped_inside_it(tmp_path):
    from matplotlib.figure import Figure

    from convscope.figures.drawing import save_figure

    fig = Figure(figsize=(5, 3), layout="constrained")
    ax = fig.subplots()
    ax.set_ylabel("density")  # moves the axes, and the title centred on it, to the right
    titles = {
        ax.set_title("second (mobilenet_v3_small): where the predicted class's Grad-CAM lies (features.12)"): 0,
        fig.suptitle("tiny (resnet18): " + " ".join(["a long figure title"] * 5)): 0,
    }
    fig.draw_without_rendering()
    assert all(text.get_window_extent().x1 > fig.bbox.width for text in titles)  # they did stick out
    titles = {text: text.get_text() for text in titles}
    save_figure(fig, tmp_path / "titles.png")
    fig.draw_without_rendering()  # measured at the figure's own dpi again (savefig drew at 150)
    for text, before in titles.items():
        extent = text.get_window_extent()
        assert 0 <= extent.x0 and extent.x1 <= fig.bbox.width, text.get_text()
        assert "\n" in text.get_text() and text.get_text().replace("\n", " ") == before  # wrapped at spaces
    assert "mobilenet_v3_small" in ax.title.get_text() and "Grad-CAM" in ax.title.get_text()
