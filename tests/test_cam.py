"""The Grad-CAM engine: parity with pytorch-grad-cam, a hand computation, hook hygiene, and blank-map flags."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torchvision
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, LayerCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from convscope.cam import ActivationRecorder, grad_cam
from convscope.errors import UserError

REFERENCE = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "layercam": LayerCAM}
TOL = 1e-4


def reference_maps(
    model: nn.Module, x: torch.Tensor, layer: str, targets: torch.Tensor, method: str = "gradcam"
) -> torch.Tensor:
    """pytorch-grad-cam's maps for one layer (its multi-layer call would average the layers)."""
    with REFERENCE[method](model, [model.get_submodule(layer)]) as cam:
        maps = torch.from_numpy(cam(x, [ClassifierOutputTarget(int(t)) for t in targets]))
    model.zero_grad(set_to_none=True)  # its backward fills parameter .grad; keep the shared models clean
    return maps


def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks for m in model.modules())


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(3, 3, 64, 64)


class TinyNet(nn.Module):
    """conv → ReLU → conv → ReLU → global average pool → linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 5, 3, stride=2, padding=1)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu2(self.conv2(self.conv1(x).relu())).mean((2, 3)))


@pytest.fixture
def tiny() -> TinyNet:
    torch.manual_seed(2)
    return TinyNet()


# --- parity with pytorch-grad-cam ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam"])
def test_resnet18_equals_pytorch_grad_cam(resnet18, images, method):
    layers = ["layer2", "layer3", "layer4"]
    result = grad_cam(resnet18, images, layers, method=method)
    for layer in layers:
        assert result.maps[layer].shape == (3, 64, 64)
        expected = reference_maps(resnet18, images, layer, result.targets, method)
        torch.testing.assert_close(result.maps[layer], expected, atol=TOL, rtol=0)


@pytest.mark.parametrize(
    ("arch", "layers", "size"),
    [
        ("mobilenet_v3_small", ["features.8", "features.12"], 96),
        ("inception_v3", ["Mixed_5d", "Mixed_6e", "Mixed_7c"], 107),
    ],
)
def test_other_archs_equal_pytorch_grad_cam(arch, layers, size):
    torch.manual_seed(3)
    kwargs = {"aux_logits": False, "init_weights": False} if arch == "inception_v3" else {}
    model = torchvision.models.get_model(arch, weights=None, num_classes=10, **kwargs)
    if arch == "inception_v3":
        # PyTorch's default init shrinks activations through Inception's ~100 convs (logits ~1e-3, the same for
        # every image, maps ≤ 0 for the argmax class); He init keeps the maps informative.
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    x = torch.randn(2, 3, size, size)
    result = grad_cam(model, x, layers)
    for layer in layers:
        expected = reference_maps(model, x, layer, result.targets)
        torch.testing.assert_close(result.maps[layer], expected, atol=TOL, rtol=0)
        assert not result.flags[layer].any()


def test_logits_attribute_and_train_mode(resnet18, images):
    class WithLogits(nn.Module):  # returns InceptionOutputs, as Inception v3 does in training mode
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torchvision.models.InceptionOutputs:
            return torchvision.models.InceptionOutputs(self.net(x), None)

    wrapped = WithLogits(resnet18).train()
    before = resnet18.bn1.running_mean.clone()
    result = grad_cam(wrapped, images, ["net.layer4"])
    # The call ran in eval mode (batch-norm statistics untouched) and gave back training mode.
    assert result.logits.shape == (3, 10) and wrapped.training and resnet18.training
    assert torch.equal(resnet18.bn1.running_mean, before)
    resnet18.eval()


# --- an independent hand computation --------------------------------------------------------------------------


def test_tiny_net_equals_hand_computation(tiny):
    x = torch.randn(2, 3, 12, 12)
    targets = [2, 0]
    a1 = tiny.conv1(x)
    a2 = tiny.conv2(a1.relu())
    a1.retain_grad()
    a2.retain_grad()
    logits = tiny.fc(a2.relu().mean((2, 3)))
    logits[torch.arange(2), targets].sum().backward()

    def by_hand(a: torch.Tensor, g: torch.Tensor) -> np.ndarray:
        a, g = a.detach().numpy(), g.numpy()
        cams = []
        for acts, grads in zip(a, g):
            cam = np.maximum(np.einsum("c,chw->hw", grads.mean((1, 2)), acts), 0)
            cam = cv2.resize((cam - cam.min()) / (cam.max() - cam.min() + 1e-7), (12, 12))
            cams.append((cam - cam.min()) / (cam.max() - cam.min() + 1e-7))
        return np.stack(cams)

    tiny.zero_grad(set_to_none=True)
    result = grad_cam(tiny, x, ["conv1", "conv2"], targets=targets)
    torch.testing.assert_close(result.logits, logits.detach())
    assert result.raw["conv2"].shape == (2, 6, 6)
    np.testing.assert_allclose(result.maps["conv1"].numpy(), by_hand(a1, a1.grad), atol=TOL)
    np.testing.assert_allclose(result.maps["conv2"].numpy(), by_hand(a2, a2.grad), atol=TOL)


# --- structure: batching, layers, targets ---------------------------------------------------------------------


def test_batched_equals_per_image(resnet18, images):
    batched = grad_cam(resnet18, images, ["layer3", "layer4"])
    for i in range(len(images)):
        single = grad_cam(resnet18, images[i : i + 1], ["layer3", "layer4"])
        assert single.targets.item() == batched.targets[i].item()
        for layer in ("layer3", "layer4"):
            torch.testing.assert_close(single.maps[layer][0], batched.maps[layer][i], atol=TOL, rtol=0)


def test_multi_layer_equals_each_layer_alone(resnet18, images):
    layers = ["layer1", "layer2", "layer3", "layer4"]
    together = grad_cam(resnet18, images, layers)
    assert list(together.maps) == layers
    for layer in layers:
        alone = grad_cam(resnet18, images, [layer])
        torch.testing.assert_close(alone.maps[layer], together.maps[layer], atol=1e-6, rtol=0)
        torch.testing.assert_close(alone.raw[layer], together.raw[layer], atol=1e-6, rtol=1e-5)


def test_explicit_targets(resnet18, images):
    predicted = grad_cam(resnet18, images, ["layer4"]).targets
    others = (predicted + 1) % 10
    for targets in (others, others.tolist()):
        result = grad_cam(resnet18, images, ["layer4"], targets=targets)
        assert result.targets.dtype == torch.long and result.targets.tolist() == others.tolist()
    expected = reference_maps(resnet18, images, "layer4", others)
    torch.testing.assert_close(result.maps["layer4"], expected, atol=TOL, rtol=0)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        grad_cam(resnet18, images, ["layer4"], targets=[0, 1, 10])
    with pytest.raises(ValueError, match="3 integer class indices"):
        grad_cam(resnet18, images, ["layer4"], targets=[0, 1])


# --- side effects: hooks, gradients, modes --------------------------------------------------------------------


def test_no_gradients_left_and_state_restored(tiny):
    tiny.train()
    tiny.fc.requires_grad_(False)  # a partly frozen model keeps exactly its flags
    x = torch.randn(2, 3, 12, 12, requires_grad=True)
    grad_cam(tiny, x, ["conv1", "conv2"])
    assert x.grad is None
    assert all(p.grad is None for p in tiny.parameters())
    assert [p.requires_grad for p in tiny.parameters()] == [True, True, True, True, False, False]
    assert tiny.training and no_hooks(tiny)


def test_hooks_removed_after_exceptions(tiny, monkeypatch):
    with pytest.raises(KeyError):
        with ActivationRecorder(tiny, ["conv1", "conv2"]) as recorder:
            tiny(torch.randn(1, 3, 8, 8))
            assert tiny.conv1._forward_hooks and set(recorder.outputs) == {"conv1", "conv2"}
            raise KeyError("inside the with-block")
    assert no_hooks(tiny)
    tiny.train()
    with pytest.raises(RuntimeError):  # 4 input channels: conv1 fails before any hook ran
        grad_cam(tiny, torch.randn(1, 4, 8, 8), ["conv1", "conv2"])
    assert no_hooks(tiny) and tiny.training and all(p.requires_grad for p in tiny.parameters())

    def boom(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("fails after both hooks ran")

    monkeypatch.setattr(tiny.fc, "forward", boom)
    with pytest.raises(RuntimeError, match="after both hooks"):
        grad_cam(tiny, torch.randn(1, 3, 8, 8), ["conv1", "conv2"])
    assert no_hooks(tiny) and tiny.training and all(p.requires_grad for p in tiny.parameters())


def test_unknown_layer_names_it(resnet18, images):
    with pytest.raises(UserError, match="'layer5'") as error:
        grad_cam(resnet18, images, ["layer4", "layer5"])
    assert "\n" not in str(error.value) and "did you mean 'layer4'" in str(error.value)
    assert no_hooks(resnet18)
    with torch.device("meta"):  # ~150 conv-bearing modules: the list is cut short
        deep = torchvision.models.resnet50()
    with pytest.raises(UserError, match="'nope'") as error:
        ActivationRecorder(deep, ["nope"])
    assert "\n" not in str(error.value) and str(error.value).endswith("…") and str(error.value).count(",") <= 41
    with pytest.raises(UserError, match="must be a list of layer names"):
        grad_cam(resnet18, images, "layer4")
    with pytest.raises(UserError, match="unknown method"):
        grad_cam(resnet18, images, ["layer4"], method="smoothcam")


def test_recorder_is_safe_from_in_place_ops(resnet18, images):
    # BasicBlock adds the shortcut into bn2's output in place; the recorded tensor must stay bn2's own output.
    block = resnet18.layer1[0]
    resnet18.eval()
    with torch.no_grad(), ActivationRecorder(resnet18, ["layer1.0.bn2"]) as recorder:
        resnet18(images)
        stem = resnet18.maxpool(resnet18.relu(resnet18.bn1(resnet18.conv1(images))))
        expected = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(stem)))))
    torch.testing.assert_close(recorder.outputs["layer1.0.bn2"], expected)
    result = grad_cam(resnet18, images, ["layer1.0.bn2"])
    assert torch.isfinite(result.maps["layer1.0.bn2"]).all()


# --- blank and broken maps ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam"])
def test_blank_maps_are_flagged_and_zero(tiny, method):
    x = torch.randn(3, 3, 12, 12)
    with torch.no_grad():
        tiny.fc.weight.fill_(-1.0)  # every channel lowers every logit, and post-ReLU activations are ≥ 0
    result = grad_cam(tiny, x, ["relu2"], method=method)
    assert result.flags["relu2"].all() and result.flag_count() == 3
    assert torch.equal(result.maps["relu2"], torch.zeros(3, 12, 12))
    assert torch.equal(result.raw["relu2"], torch.zeros(3, 6, 6))


def test_zeroed_layer_and_nan_input_are_flagged(tiny):
    x = torch.randn(2, 3, 12, 12)
    x[1, 0, 3, 3] = float("nan")
    result = grad_cam(tiny, x, ["conv1", "conv2"])
    assert result.flags["conv1"].tolist() == [False, True] and result.flags["conv2"].tolist() == [False, True]
    assert result.flag_count() == 2 and result.flag_count("conv1") == 1
    assert torch.isfinite(result.maps["conv1"]).all() and not result.maps["conv1"][1].any()
    assert result.maps["conv1"][0].max() == pytest.approx(1.0, abs=1e-6)
    with torch.no_grad():
        tiny.conv2.weight.zero_()
        tiny.conv2.bias.zero_()
    result = grad_cam(tiny, x[:1], ["conv2"])
    assert result.flags["conv2"].all() and not result.maps["conv2"].isnan().any() and not result.maps["conv2"].any()
