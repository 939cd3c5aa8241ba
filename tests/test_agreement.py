"""Cross-model agreement: the numbers on hand-made maps, when models can be compared, and the job's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from conftest import UNTRAINED
from PIL import Image

from convscope.agreement import agreement_of, compute_agreement, peak_agreement, rank_agreement, why_not_comparable
from convscope.config import load_config
from convscope.data import shapes
from convscope.figures.agreement import render_agreement
from convscope.training import checkpoint_of

pytestmark = pytest.mark.usefixtures("one_thread")

DATASET = {"kind": "shapes", "shapes": {"image_size": 32, "train_per_class": 12, "test_per_class": 4}}


def model_config(name: str, input_size: int, resize: int | None = None):
    raw = {"dataset": DATASET, "models": [{"name": name, "arch": "resnet18", "input_size": input_size}]}
    if resize:
        raw["models"][0]["preprocessing"] = {"resize": resize}
    return load_config(raw).models[0]


def peaked(n: int, side: int, rows: list[int], cols: list[int]) -> torch.Tensor:
    """N maps falling off linearly from one peak each."""
    y, x = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    return torch.stack([1 - ((y - r) ** 2 + (x - c) ** 2).sqrt() / (2 * side) for r, c in zip(rows, cols)])


def test_identical_maps_agree_fully():
    maps = peaked(3, 16, [2, 8, 13], [3, 8, 1])
    assert rank_agreement(maps, maps.clone()).tolist() == pytest.approx([1, 1, 1])
    assert peak_agreement(maps, maps.clone(), tolerance=0).tolist() == [1, 1, 1]
    pairs, means = agreement_of({"a": maps, "b": maps.clone()}, tolerance=1)
    assert pairs[0]["models"] == ["a", "b"] and pairs[0]["n"] == 3 and pairs[0]["undefined"] == 0
    assert (pairs[0]["mean_spearman"], pairs[0]["pointing_agreement"]) == (1, 1)
    assert means == {"mean_spearman": 1, "pointing_agreement": 1}


def test_reversed_and_distant_maps_disagree_and_the_tolerance_counts():
    a = peaked(2, 16, [2, 2], [2, 2])
    assert rank_agreement(a, 1 - a).tolist() == pytest.approx([-1, -1])
    b = peaked(2, 16, [2, 12], [5, 12])  # 3 px away, then 14 px away
    assert peak_agreement(a, b, tolerance=3).tolist() == [1, 0]
    assert peak_agreement(a, b, tolerance=2.9).tolist() == [0, 0]
    assert peak_agreement(b, a, tolerance=3).tolist() == [1, 0]  # symmetric


def test_constant_maps_are_left_out_of_the_means():
    a = peaked(2, 8, [1, 6], [1, 6])
    b = torch.stack([a[0], torch.zeros(8, 8)])  # the second map is blank
    pairs, means = agreement_of({"a": a, "b": b, "c": a.clone()}, tolerance=1)
    assert [p["models"] for p in pairs] == [["a", "b"], ["a", "c"], ["b", "c"]]
    assert pairs[0]["spearman"] == [1.0, None] and pairs[0]["pointing"] == [1.0, None]
    assert (pairs[0]["n"], pairs[0]["undefined"]) == (1, 1)
    assert means == {"mean_spearman": 1, "pointing_agreement": 1}  # 5 defined (pair, image) values, all 1


def test_models_are_compared_when_they_keep_the_same_part_of_each_image():
    assert "one model" in why_not_comparable([model_config("a", 224)])
    # Caltech profile: resize 256 → crop 224 and resize 342 → crop 299 keep 87.5% and 87.4% of the shorter side.
    assert why_not_comparable([model_config("a", 224, 256), model_config("b", 299, 342)]) is None
    assert why_not_comparable([model_config("a", 32), model_config("b", 64)]) is None  # both keep it all
    reason = why_not_comparable([model_config("a", 224, 256), model_config("b", 224)])
    assert "a 88%, b 100%" in reason and "would not line up" in reason


def save_checkpoint(path: Path, input_size: int, seed: int) -> Path:
    config = model_config(path.stem, input_size)
    torch.manual_seed(seed)
    model = torchvision.models.get_model("resnet18", weights=None, num_classes=10)
    torch.save(checkpoint_of(model, config, list(shapes.CLASSES), epoch=0, history=[], run=UNTRAINED), path)
    return path


def test_the_same_model_twice_agrees_and_other_models_are_resized(tiny_index, tmp_path):
    small = save_checkpoint(tmp_path / "small.pt", 32, seed=0)
    checkpoints = {"small": small, "again": small, "large": save_checkpoint(tmp_path / "large.pt", 64, seed=1)}
    layers = {"small": "layer3", "again": "layer3", "large": "layer3"}
    found = compute_agreement(checkpoints, tiny_index, layers=layers, num_images=4, batch_size=3)
    report = found.report
    assert (
        report["skipped"] is None and report["size"] == 32 and report["tolerance_px"] == pytest.approx(15 / 7, abs=1e-4)
    )
    assert [tuple(m.shape) for m in found.maps.values()] == [(4, 32, 32)] * 3
    assert len(set(report["labels"])) == 4  # spread over the classes
    same = report["pairs"][0]
    assert same["models"] == ["small", "again"] and same["n"] == 4
    assert same["mean_spearman"] == pytest.approx(1) and same["pointing_agreement"] == 1
    assert report["predictions"]["small"] == report["predictions"]["again"]
    assert found.inputs.shape == (4, 3, 32, 32) and found.display.name == "small"

    files = render_agreement(
        checkpoints, tiny_index, tmp_path / "figs", tmp_path / "agreement.json", layers=layers, num_images=4
    )
    assert [f.name for f in files] == ["agreement.json", "agreement.png", "agreement.npz"]
    assert json.loads((tmp_path / "agreement.json").read_text()) == json.loads(json.dumps(report))
    with Image.open(tmp_path / "figs/agreement.png") as image:
        assert image.size[0] > 600 and image.size[1] > 600
    with np.load(tmp_path / "figs/agreement.npz") as arrays:
        np.testing.assert_array_equal(arrays["cam_small"], arrays["cam_again"])
        assert arrays["cam_large"].shape == (4, 32, 32) and list(arrays["models"]) == list(checkpoints)


def test_one_model_is_skipped_with_a_note(tiny_index, tmp_path):
    checkpoint = save_checkpoint(tmp_path / "only.pt", 32, seed=0)
    files = render_agreement({"only": checkpoint}, tiny_index, tmp_path / "figs", tmp_path / "agreement.json")
    report = json.loads(files[0].read_text())
    assert "one model" in report["skipped"] and report["pairs"] == [] and report["mean_spearman"] is None
    assert (tmp_path / "figs/agreement.png").is_file()
