"""Bad input gives one line naming the culprit and the fix, exit status 1, and no output left behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import TINY, write_yaml

from convscope.cli import main
from convscope.errors import ConfigError


def run_cli(tmp_path: Path, config: dict | None, *args: str, capsys) -> tuple[int, str]:
    config_path = tmp_path / "config.yaml"
    if config is not None:
        write_yaml(config_path, config)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        status = main(["--config", config_path.name, *args])
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err.strip()
    return status, err


def with_model(**overrides) -> dict:
    return {"dataset": TINY["dataset"], "models": [{**TINY["models"][0], **overrides}]}


CASES = {
    "wrong type": (
        with_model(epochs="ten"),
        "config models[0].epochs = \"ten\": 'ten' is not of type 'integer'; expected integer",
    ),
    "float for int": (
        with_model(batch_size=1.5),
        "config models[0].batch_size = 1.5: 1.5 is not of type 'integer'; expected integer",
    ),
    "negative lr": (
        with_model(lr=-1),
        "config models[0].lr = -1: -1 is less than or equal to the minimum of 0; must be > 0",
    ),
    "unknown arch": (
        with_model(arch="resnet19"),
        "config models[0].arch = 'resnet19' is not a torchvision classification model; choose one of: alexnet,",
    ),
    "unknown key": (
        with_model(epoch=3),
        "config models[0]: Additional properties are not allowed ('epoch' was unexpected); allowed keys:",
    ),
    "missing arch": ({"models": [{"name": "x"}]}, "config models[0]: 'arch' is a required property; add it"),
    "bad dataset kind": (
        {"dataset": {"kind": "cifar100"}},
        "config dataset.kind = \"cifar100\": 'cifar100' is not one of",
    ),
    "missing dataset root": (
        {"dataset": {"kind": "cifar10", "root": "nowhere"}},
        "config dataset.root: folder 'nowhere' not found; put the dataset there or fix the path",
    ),
    "no dataset root": (
        {"dataset": {"kind": "imagefolder"}},
        "config dataset.root is missing; dataset kind 'imagefolder' reads a local copy: set dataset.root to its folder",
    ),
    "missing weights file": (
        with_model(weights="weights/resnet18.pth"),
        "config models[0].weights: file 'weights/resnet18.pth' not found; put the weights file there or fix the path",
    ),
    "inception too small": (
        with_model(arch="inception_v3", input_size=96),
        (
            "config models[0].input_size = 96 is too small for inception_v3 "
            "(needs >= 299); set aux_logits: false (needs >= 75) or raise "
            "input_size"
        ),
    ),
    "inception without aux too small": (
        with_model(arch="inception_v3", input_size=64, aux_logits=False),
        "config models[0].input_size = 64 is too small for inception_v3 (needs >= 75); raise input_size",
    ),
    "duplicate names": (
        {"models": [{"name": "a", "arch": "resnet18"}, {"name": "a", "arch": "resnet34"}]},
        "config models: name 'a' is used twice; give every model a unique name",
    ),
    "bad model name": (with_model(name="res net"), "config models[0].name = \"res net\": 'res net' does not match"),
    "resize below input": (
        with_model(preprocessing={"resize": 16}),
        "config models[0].preprocessing.resize = 16 is smaller than input_size 32; resize to at least input_size",
    ),
    "squeezenet too small": (
        with_model(arch="squeezenet1_1", input_size=16),
        "config models[0].input_size = 16 is too small for squeezenet1_1 (needs >= 17); raise input_size",
    ),
    "vit too small": (
        with_model(arch="vit_b_16", input_size=48),
        "config models[0].input_size = 48 is too small for vit_b_16 (needs >= 224); raise input_size",
    ),
    "vit built for one size": (
        with_model(arch="vit_b_16", input_size=256),
        "config models[0].input_size = 256 does not fit vit_b_16 (Wrong image height! Expected 224 but got 256!); "
        "use 224",
    ),
    "weights in a folder": (
        with_model(weights="."),
        "config models[0].weights: '.' is a directory; give the path of the weights file inside it",
    ),
    "mapping for a list": ({"models": {"a": 1}}, "config models = {\"a\": 1}: {'a': 1} is not of type 'array'"),
    "list for a mapping": (
        {"figures": {"gradcam": {"layers": ["layer4"]}}},
        "config figures.gradcam.layers = [\"layer4\"]: ['layer4'] is not of type 'object'; expected object",
    ),
    "empty list": ({"explanations": {"methods": []}}, "config explanations.methods = []: [] should be non-empty"),
    "short list": (
        with_model(preprocessing={"mean": [0.5, 0.5]}),
        "config models[0].preprocessing.mean = [0.5, 0.5]: [0.5, 0.5] is too short; needs at least 3 item(s)",
    ),
    "not a mapping": ([1, 2], "config file 'config.yaml' holds a list at the top level; write a mapping of keys"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_config_is_one_line_and_exit_1(tmp_path, capsys, case):
    config, expected = CASES[case]
    status, err = run_cli(tmp_path, config, "check-config", capsys=capsys)
    assert status == 1
    assert err.startswith(f"convscope: error: {expected}"), err
    assert len(err.splitlines()) == 1


def test_missing_config_file(tmp_path, capsys):
    status, err = run_cli(tmp_path, None, "check-config", capsys=capsys)
    assert status == 1 and "not found; pass the path of a YAML config" in err


def test_unknown_model_name(tmp_path, capsys):
    status, err = run_cli(tmp_path, TINY, "train", "--model", "resnet99", capsys=capsys)
    assert status == 1 and err == "convscope: error: unknown model 'resnet99'; configured models: tiny"


def test_weights_of_another_arch_leave_no_checkpoint(tmp_path, capsys):
    torch.save(torchvision.models.resnet34(num_classes=1000).state_dict(), tmp_path / "r34.pth")
    status, err = run_cli(tmp_path, with_model(weights=str(tmp_path / "r34.pth")), "prepare-data", capsys=capsys)
    assert status == 0
    status, err = run_cli(
        tmp_path, with_model(weights=str(tmp_path / "r34.pth")), "train", "--model", "tiny", capsys=capsys
    )
    assert status == 1
    assert "does not fit this architecture" in err and "use weights saved from the same arch" in err
    assert not (tmp_path / "results/tiny/checkpoint.pt").exists()


def test_corrupt_weights_file(tmp_path, capsys):
    (tmp_path / "bad.pth").write_bytes(b"not a torch file")
    run_cli(tmp_path, with_model(weights=str(tmp_path / "bad.pth")), "prepare-data", capsys=capsys)
    status, err = run_cli(
        tmp_path, with_model(weights=str(tmp_path / "bad.pth")), "train", "--model", "tiny", capsys=capsys
    )
    assert status == 1 and f"weights file '{tmp_path / 'bad.pth'}' cannot be read" in err


def test_corrupt_checkpoint_leaves_no_metrics(tmp_path, capsys):
    run_cli(tmp_path, TINY, "prepare-data", capsys=capsys)
    (tmp_path / "results/tiny").mkdir(parents=True)
    (tmp_path / "results/tiny/checkpoint.pt").write_bytes(b"\x00garbage")
    status, err = run_cli(tmp_path, TINY, "evaluate", "--model", "tiny", capsys=capsys)
    assert status == 1
    assert err == (
        "convscope: error: checkpoint 'results/tiny/checkpoint.pt' cannot "
        "be read (UnpicklingError); delete it and rerun training"
    )
    assert not any((tmp_path / "results/tiny").glob("*.json"))


def test_class_count_mismatch_between_checkpoint_and_dataset(tmp_path, capsys):
    assert run_cli(tmp_path, with_model(epochs=1), "prepare-data", capsys=capsys)[0] == 0
    assert run_cli(tmp_path, with_model(epochs=1), "train", "--model", "tiny", capsys=capsys)[0] == 0
    # The same checkpoint evaluated on a 3-class image folder.
    from PIL import Image

    for name in ("a", "b", "c"):
        for i in range(4):
            (tmp_path / "folder" / name).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (40, 40), (i * 60, 0, 0)).save(tmp_path / "folder" / name / f"{i}.png")
    other = {
        "dataset": {
            "kind": "imagefolder",
            "name": "shapes",
            "root": str(tmp_path / "folder"),
            "val_fraction": 0.25,
            "test_fraction": 0.25,
        },
        "models": with_model(epochs=1)["models"],
    }
    assert run_cli(tmp_path, other, "prepare-data", capsys=capsys)[0] == 0
    status, err = run_cli(tmp_path, other, "evaluate", "--model", "tiny", capsys=capsys)
    assert status == 1
    assert err == (
        "convscope: error: checkpoint 'results/tiny/checkpoint.pt' was "
        "trained on 10 classes but the dataset has 3; retrain the model "
        "on this dataset"
    )
    assert not (tmp_path / "results/tiny/metrics.json").exists()


def test_invalid_yaml(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("models: [unclosed\n")
    status, err = run_cli(tmp_path, None, "check-config", capsys=capsys)
    assert status == 1 and err == (
        "convscope: error: config file 'config.yaml', line 2, column 1: not valid YAML "
        "(expected ',' or ']', but got '<stream end>'); fix the syntax there"
    )


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"dataset": {"name": ".."}}, "config dataset.name = \"..\": '..' does not match"),
        (
            {
                "models": [{"name": "r", "arch": "resnet18"}],
                "figures": {"gradcam": {"layers": {"resnet81": ["layer4"]}}},
            },
            "config figures.gradcam.layers names model 'resnet81', which is not configured; use one of: r",
        ),
    ],
)
def test_unsafe_dataset_name_and_layer_lists_of_unknown_models_are_refused(raw, message):
    from convscope.config import load_config

    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(raw)


def test_the_computed_minimum_input_size_is_the_real_one():
    from conftest import tiny_config

    from convscope.models import build_model, min_input_size

    config = tiny_config(arch="squeezenet1_1", input_size=224)
    minimum = min_input_size(config)
    model = build_model(config, num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, minimum, minimum)).shape == (1, 3)
        with pytest.raises(RuntimeError, match="Output size is too small"):
            model(torch.zeros(1, 3, minimum - 1, minimum - 1))


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_a_device_torch_does_not_report_is_refused(tmp_path, capsys, monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    status, err = run_cli(tmp_path, {**TINY, "runtime": {"device": device}}, "check-config", capsys=capsys)
    assert status == 1
    assert err == (
        f"convscope: error: config runtime.device = '{device}', but torch finds no {device} device on this machine "
        "(available: cpu); set runtime.device to auto or one of those"
    )


def test_a_single_class_dataset_is_refused_at_prepare_time(tmp_path, capsys):
    from PIL import Image

    (tmp_path / "folder/cat").mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (8, 8), (i * 60, 0, 0)).save(tmp_path / f"folder/cat/{i}.png")
    config = {"dataset": {"kind": "imagefolder", "name": "pets", "root": str(tmp_path / "folder")}}
    status, err = run_cli(tmp_path, config, "prepare-data", capsys=capsys)
    assert status == 1
    assert err.splitlines()[-1] == (  # after the progress bar of the indexing
        f"convscope: error: dataset 'pets' under '{tmp_path / 'folder'}' has 1 class (cat); "
        "a classifier needs at least 2: add a folder of images per class"
    )
    assert not (tmp_path / "data/pets/index.json").exists()


def test_a_folder_given_as_weights_file_is_named_as_such(tmp_path):
    from convscope.errors import WeightsError
    from convscope.models import read_state_dict

    message = f"weights path '{tmp_path}' is a directory; set models[].weights to the file inside it"
    with pytest.raises(WeightsError, match=re.escape(message)):
        read_state_dict(tmp_path)


BAD_FILES = {
    "syntax": (
        "models:\n  - name: a\n\tarch: resnet18\n",
        "config file 'config/config.yaml', line 3, column 1: not valid YAML "
        "(found character '\\t' that cannot start any token); fix the syntax there",
    ),
    "empty": ("# nothing yet\n", "config file 'config/config.yaml' is empty; write the settings as YAML keys"),
    "list": ("- resnet18\n", "config file 'config/config.yaml' holds a list at the top level; write a mapping"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_broken_config_file_is_named_with_its_line(tmp_path, capsys, case):
    text, expected = BAD_FILES[case]
    (tmp_path / "config.yaml").write_text(text)
    status, err = run_cli(tmp_path, None, "check-config", capsys=capsys)
    assert status == 1 and err.startswith(f"convscope: error: {expected}".replace("config/config.yaml", "config.yaml"))
    assert len(err.splitlines()) == 1


def test_snakemake_names_the_line_of_a_broken_config_file(tmp_path):
    # The workflow reads its config file before Snakemake does: Snakemake's message names neither file nor line.
    from conftest import REPO

    errors = []
    for text, _ in BAD_FILES.values():
        (tmp_path / "config").mkdir(exist_ok=True)
        (tmp_path / "config/config.yaml").write_text(text)
        result = subprocess.run(
            [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(REPO / "Snakefile"), "-d", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 1
        errors.append(result.stderr.strip().splitlines()[-1])
    for error, (_, expected) in zip(errors, BAD_FILES.values()):
        assert error.startswith(f"convscope: error: {expected}"), error


def test_runtime_defaults_for_calls_from_python_are_the_configs_and_overrides_are_checked():
    from convscope.config import RuntimeConfig, load_config

    assert RuntimeConfig.defaults() == load_config({"models": [{"name": "r", "arch": "resnet18"}]}).runtime
    assert RuntimeConfig.defaults(precision="bf16").precision == "bf16"
    with pytest.raises(ConfigError, match=re.escape('config runtime.precision = "x"')):
        RuntimeConfig.defaults(precision="x")
