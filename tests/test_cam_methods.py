"""Every CAM method of the engine equals pytorch-grad-cam's, at two layers of resnet18, resnet50 and inception_v3;
ROAD equals pytorch-grad-cam's ``ROADMostRelevantFirst``/``ROADLeastRelevantFirst``; one forward and one backward
pass serve every gradient method.

Random weights and small random inputs keep this file to seconds. pytorch-grad-cam's EigenCAM and EigenGrad-CAM
leave the sign of the principal component to LAPACK; the engine fixes it with pytorch-grad-cam's own rule
(``get_2d_projection_with_sign_correction``), so the references here use that rule too.
"""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_grad_cam as pgc
import torch
import torchvision
from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst, ROADMostRelevantFirst
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_with_sign_correction
from torch import nn

from convscope.cam import cams, grad_cam
from convscope.explain import ROAD_FRACTIONS, impute, removal_masks, road
from convscope.methods import GRADIENT_METHODS, METHODS, REFERENCE_CLASSES

TOL = 1e-4


class SignedEigenCAM(pgc.EigenCAM):
    def get_cam_image(self, input_tensor, target_layer, targets, activations, grads, eigen_smooth):
        return get_2d_projection_with_sign_correction(activations)


class SignedEigenGradCAM(pgc.EigenGradCAM):
    def get_cam_image(self, input_tensor, target_layer, targets, activations, grads, eigen_smooth):
        return get_2d_projection_with_sign_correction(grads * activations)


# EigenCAM and EigenGrad-CAM with the sign rule the engine uses (see the module docstring).
REFERENCE = {method: getattr(pgc, name) for method, name in REFERENCE_CLASSES.items()} | {
    "eigengradcam": SignedEigenGradCAM,
    "eigencam": SignedEigenCAM,
}
CHEAP = [m for m in METHODS if m not in ("scorecam", "ablationcam")]


pytestmark = pytest.mark.usefixtures("one_thread")


def model_of(arch: str) -> nn.Module:
    torch.manual_seed(3)
    kwargs = {"aux_logits": False, "init_weights": False} if arch == "inception_v3" else {}
    model = torchvision.models.get_model(arch, weights=None, num_classes=10, **kwargs).eval()
    if arch == "inception_v3":  # He init keeps Inception's maps informative (see test_cam.py)
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return model


def reference(model: nn.Module, x: torch.Tensor, layer: str, targets: torch.Tensor, method: str) -> torch.Tensor:
    """pytorch-grad-cam's maps for one layer (its multi-layer call would average the layers)."""
    with REFERENCE[method](model, [model.get_submodule(layer)]) as cam:
        cam.batch_size = 64
        maps = torch.from_numpy(cam(x, [ClassifierOutputTarget(int(t)) for t in targets]))
    model.zero_grad(set_to_none=True)
    return maps


@pytest.mark.parametrize(
    ("arch", "size", "layers", "methods"),
    [
        ("resnet18", 64, ["layer3", "layer4"], CHEAP),
        # One forward per image and channel: the shallower layers keep these to ~800 forwards of 64 px images.
        ("resnet18", 64, ["layer2", "layer3"], ["scorecam", "ablationcam"]),
        ("resnet50", 64, ["layer3", "layer4"], CHEAP),
        ("inception_v3", 75, ["Mixed_5d", "Mixed_6e"], CHEAP),  # Mixed_7c is 1×1 at 75 px
    ],
)
def test_every_method_equals_pytorch_grad_cam(arch, size, layers, methods):
    model = model_of(arch)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(4))
    found = cams(model, x, layers, methods)
    assert list(found) == methods
    for method in methods:
        for layer in layers:
            expected = reference(model, x, layer, found[method].targets, method)
            torch.testing.assert_close(found[method].maps[layer], expected, atol=TOL, rtol=0, msg=f"{method} {layer}")
            assert found[method].maps[layer].shape == (2, size, size)
    # Random weights leave a few maps blank (flagged, all zero on both sides); most must hold something to compare.
    flagged = sum(result.flag_count() for result in found.values())
    assert flagged <= 0.25 * 2 * len(layers) * len(methods)


def test_one_forward_and_one_backward_serve_every_gradient_method(monkeypatch):
    model = model_of("resnet18")
    x = torch.randn(2, 3, 48, 48)
    forwards, backwards = [], []
    model.register_forward_hook(lambda module, args, output: forwards.append(1))
    grad = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: backwards.append(1) or grad(*a, **k))
    found = cams(model, x, ["layer2", "layer4"], [*GRADIENT_METHODS, "eigencam"])
    assert len(forwards) == 1 and len(backwards) == 1
    for method, result in found.items():  # the same maps as one method alone
        alone = grad_cam(model, x, ["layer2", "layer4"], method=method)
        for layer in ("layer2", "layer4"):
            torch.testing.assert_close(result.maps[layer], alone.maps[layer], atol=1e-6, rtol=0)
    forwards.clear(), backwards.clear()
    cams(model, x, ["layer4"], ["eigencam"])
    assert len(forwards) == 1 and not backwards  # EigenCAM alone needs no backward
    forwards.clear()
    cams(model, x, ["layer4"], ["scorecam"], batch_size=300)  # 2 images × 512 channels, at most 300 at a time
    assert len(forwards) == 1 + 4


def test_eigencam_sign_makes_the_largest_magnitude_positive():
    x = torch.zeros(1, 2, 4, 4)
    x[0, 0, 0, 0] = 10.0  # one pixel far from the rest along channel 0: its projection must come out positive
    x[0, 1] = torch.rand(4, 4) * 0.1
    from convscope.cam import _first_component

    projection = _first_component(x)[0]
    assert projection[0, 0] == projection.max() > 0 and projection.max() > projection.min().abs()
    torch.testing.assert_close(_first_component(-x), projection[None])  # the sign does not follow the data's


# --- ROAD ------------------------------------------------------------------------------------------------------


def test_road_equals_pytorch_grad_cam():
    """At 80 px (6,400 pixels) on maps without ties, pytorch-grad-cam's percentile threshold removes exactly
    ``round(f * H * W)`` pixels, the engine's count, so both remove the same pixels (checked first); with the
    imputation noise off, both solve the same sparse system, and the softmax probabilities agree within 1e-4.
    They differ by design elsewhere: pytorch-grad-cam removes every pixel tied at its threshold (a map with a
    plateau of zeros loses more than the fraction), and draws its noise from the global random stream."""
    model = model_of("resnet18")
    x = torch.randn(2, 3, 80, 80, generator=torch.Generator().manual_seed(5))
    maps = nn.functional.interpolate(torch.rand(2, 1, 5, 5, generator=torch.Generator().manual_seed(6)), size=(80, 80))
    maps = maps[:, 0] + 1e-3 * torch.rand(2, 80, 80, generator=torch.Generator().manual_seed(7))  # no ties
    targets = model(x).argmax(1)
    ours = road(model, x, maps, targets, noise=0.0, batch_size=8)
    softmax = [ClassifierOutputSoftmaxTarget(int(t)) for t in targets]
    for k, f in enumerate(ROAD_FRACTIONS):
        for kind, metric, first in (
            ("morf", ROADMostRelevantFirst, True),
            ("lerf", ROADLeastRelevantFirst, False),
        ):
            percentile = round(100 * (1 - f))
            for i in range(2):
                cam = maps[i] if first else 1 - maps[i]
                kept = cam < np.percentile(cam.numpy(), percentile)
                assert torch.equal(~kept, removal_masks(maps[i : i + 1], [f], first)[0, 0])
            reference_metric = metric(percentile)
            reference_metric.perturbation.imputer.noise = 0.0
            expected = reference_metric(x, maps.numpy(), softmax, model, return_diff=False)
            np.testing.assert_allclose(getattr(ours, kind)[:, k].numpy(), expected, atol=TOL, err_msg=f"{kind} {f}")


def test_road_removes_the_ranked_share_and_noise_is_seeded():
    maps = torch.arange(100.0).view(1, 10, 10)
    morf, lerf = removal_masks(maps, [0.1, 0.5], True), removal_masks(maps, [0.1, 0.5], False)
    assert morf.sum((2, 3)).tolist() == [[10, 50]] and morf[0, 0].flatten()[-10:].all()
    assert lerf[0, 0].flatten()[:10].all() and (morf ^ lerf)[0, 1].all()
    images = torch.randn(1, 3, 10, 10)
    holes = morf[:, 1]
    filled = impute(images, holes, noise=0.0)
    assert torch.equal(filled[:, :, ~holes[0]], images[:, :, ~holes[0]])
    # A removed pixel with only removed neighbours is the weighted mean of its neighbours (the system's equation).
    y, x = 8, 5
    weights = torch.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]])
    torch.testing.assert_close(filled[0, :, y, x], (filled[0, :, y - 1 : y + 2, x - 1 : x + 2] * weights).sum((1, 2)))
    noisy = [impute(images, holes, 0.01, torch.Generator().manual_seed(0)) for _ in range(2)]
    assert torch.equal(noisy[0], noisy[1]) and 0 < (noisy[0] - filled).abs().max() < 0.1


def test_the_config_offers_every_method_of_the_engine_for_figures_and_metrics():
    from convscope.config import load_config, schema

    figures = schema()["properties"]["figures"]["properties"]["gradcam"]["properties"]["method"]["enum"]
    metrics = schema()["properties"]["explanations"]["properties"]["methods"]["items"]["enum"]
    assert figures == metrics == list(METHODS)
    config = load_config(
        {"models": [{"name": "r", "arch": "resnet18"}], "figures": {"gradcam": {"method": "hirescam"}}}
    )
    assert config.figures.gradcam.method == "hirescam"
