"""Shared fixtures: tiny configs and prepared datasets that the tests make themselves."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from convscope.config import load_config
from convscope.data import prepare_dataset

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "dataset": {"kind": "shapes", "shapes": {"image_size": 32, "train_per_class": 12, "test_per_class": 4}},
    "models": [{"name": "tiny", "arch": "resnet18", "input_size": 32, "epochs": 2, "batch_size": 16, "lr": 0.01}],
}

# The runtime record of a checkpoint made without training (random weights), for tests that fabricate one.
UNTRAINED = {"device": "cpu", "precision": "fp32", "channels_last": False, "workers": 0}


def tiny_config(**model_overrides):
    """The tiny model config (resnet18 at 32 px, 2 epochs), with keys overridden."""
    raw = {"dataset": TINY["dataset"], "models": [{**TINY["models"][0], **model_overrides}]}
    return load_config(raw).models[0]


def write_yaml(path: Path, payload: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(payload))
    return path


@pytest.fixture(scope="session")
def tiny_index(tmp_path_factory) -> Path:
    """A tiny prepared shapes dataset (10 classes, 32 px), shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("shapes")
    prepare_dataset(load_config(TINY).dataset, out)
    return out / "index.json"


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny tensors: more threads only add synchronisation on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
