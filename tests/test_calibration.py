"""Expected calibration error and the reliability diagram's bins on logits whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from convscope.evaluation import CALIBRATION_BINS, calibration


def logits_with_confidence(confidence: float, n: int, classes: int = 2) -> torch.Tensor:
    """N×K logits whose softmax gives class 0 probability ``confidence`` and splits the rest evenly."""
    rest = (1 - confidence) / (classes - 1)
    return torch.log(torch.tensor([[confidence] + [rest] * (classes - 1)] * n))


def test_perfectly_calibrated_bins_give_zero():
    # 4 images at 75% confidence with 3 right, 10 at 90% with 9 right: each bin's accuracy is its confidence.
    logits = torch.cat([logits_with_confidence(0.75, 4, classes=5), logits_with_confidence(0.9, 10, classes=5)])
    labels = torch.tensor([0, 0, 0, 1] + [0] * 9 + [1])
    result = calibration(logits, labels)
    assert result["ece"] == pytest.approx(0, abs=1e-6)
    filled = [b for b in result["bins"] if b["count"]]
    assert [(b["count"], b["confidence"], b["accuracy"]) for b in filled] == [(4, 0.75, 0.75), (10, 0.9, 0.9)]
    assert filled[0]["lower"] < 0.75 <= filled[0]["upper"] and filled[1]["lower"] < 0.9 <= filled[1]["upper"]


def test_confident_mistakes_give_about_one():
    logits = torch.tensor([[20.0, 0.0, 0.0]] * 6)
    result = calibration(logits, torch.ones(6, dtype=torch.long))
    assert result["ece"] == pytest.approx(1, abs=1e-6)
    assert result["bins"][-1]["count"] == 6 and result["bins"][-1]["accuracy"] == 0


def test_ece_is_the_weighted_gap_of_equal_width_bins():
    torch.manual_seed(0)
    logits, labels = torch.randn(500, 10) * 3, torch.randint(0, 10, (500,))
    result = calibration(logits, labels)
    # The definition, written out independently: bin m holds confidences in ((m-1)/M, m/M].
    probabilities = logits.double().softmax(1).numpy()
    confidence, correct = probabilities.max(1), probabilities.argmax(1) == labels.numpy()
    expected = 0.0
    for m in range(CALIBRATION_BINS):
        inside = (confidence > m / CALIBRATION_BINS) & (confidence <= (m + 1) / CALIBRATION_BINS)
        if inside.any():
            expected += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
            assert result["bins"][m]["count"] == inside.sum()
        else:
            empty = result["bins"][m]
            assert (empty["count"], empty["confidence"], empty["accuracy"]) == (0, None, None)
    assert result["ece"] == pytest.approx(expected, abs=1e-6) and 0 < expected < 1
    assert sum(b["count"] for b in result["bins"]) == 500
    assert [b["upper"] for b in result["bins"]] == pytest.approx(np.linspace(0, 1, CALIBRATION_BINS + 1)[1:], abs=1e-6)


def test_bin_count_is_a_parameter_and_bad_shapes_are_refused():
    logits = torch.log(torch.tensor([[0.5, 0.5], [math.exp(-0.1), 1 - math.exp(-0.1)]]))
    assert len(calibration(logits, torch.tensor([0, 0]), bins=4)["bins"]) == 4
    with pytest.raises(ValueError, match="N×K logits"):
        calibration(torch.zeros(3), torch.zeros(3, dtype=torch.long))
