import dataclasses

import pytest
import torch
import torchvision
from conftest import tiny_config

from convscope import models
from convscope.config import CLASSIFICATION_ARCHS
from convscope.models import (
    WeightsError,
    build_model,
    head_keys,
    head_parameter_names,
    inference_copy,
    min_input_size,
    model_from_checkpoint,
)

# One or two of each family the figures support; each at the smallest input it accepts.
ARCHS = [
    "resnet18",
    "resnet50",
    "inception_v3",
    "vgg11_bn",
    "densenet121",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "shufflenet_v2_x0_5",
    "regnet_y_400mf",
    "squeezenet1_1",
    "convnext_tiny",
]


def test_arch_list_matches_the_installed_torchvision():
    assert list(CLASSIFICATION_ARCHS) == sorted(torchvision.models.list_models(module=torchvision.models))


@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_builds_and_runs_at_its_minimum_size(arch):
    aux = arch == "inception_v3"
    config = tiny_config(arch=arch, input_size=299 if aux else 32)
    size = min_input_size(config) if aux else 32
    model = build_model(config, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 7)
    assert head_parameter_names(model, config), "the head must be found for fine-tuning"


@pytest.mark.parametrize("arch", ARCHS)
def test_a_checkpoint_rebuilds_the_model_exactly_without_initialising_it(arch):
    size = 299 if arch == "inception_v3" else 32
    config = tiny_config(arch=arch, input_size=size)
    trained = build_model(config, num_classes=7).to(memory_format=torch.channels_last).eval()
    checkpoint = {"config": dataclasses.asdict(config), "num_classes": 7, "state_dict": trained.state_dict()}
    rebuilt = model_from_checkpoint(checkpoint)
    assert not rebuilt.training
    plain = build_model(config, num_classes=7)
    plain.load_state_dict(trained.state_dict())
    for (key, ours), theirs in zip(rebuilt.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(ours, theirs) and ours.stride() == theirs.stride(), key  # the layout a plain load makes
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), plain.eval()(x))


def test_a_tensor_the_checkpoint_lacks_is_a_bug_not_a_meta_tensor(monkeypatch):
    class Scaled(torch.nn.Linear):
        def __init__(self, num_classes: int, **kwargs) -> None:
            super().__init__(3, num_classes)
            self.register_buffer("scale", torch.ones(1), persistent=False)  # in no state dict

    monkeypatch.setattr(models, "_construct", lambda arch, num_classes, **kwargs: Scaled(num_classes))
    config = tiny_config()
    checkpoint = {"config": dataclasses.asdict(config), "num_classes": 2, "state_dict": Scaled(2).state_dict()}
    with pytest.raises(RuntimeError, match="scale"):
        model_from_checkpoint(checkpoint)


def test_inception_heads_include_the_aux_classifier():
    keys = head_keys("inception_v3", aux_logits=True, init_weights=False, transform_input=False)
    assert {"fc.weight", "fc.bias", "AuxLogits.fc.weight", "AuxLogits.fc.bias"} == set(keys)


def test_inception_aux_logits_need_299_pixels():
    model = build_model(tiny_config(arch="inception_v3", input_size=299), num_classes=3).train()
    out = model(torch.randn(2, 3, 299, 299))
    assert out.logits.shape == (2, 3) and out.aux_logits.shape == (2, 3)
    with pytest.raises(RuntimeError):
        model(torch.randn(2, 3, 298, 298))


@pytest.mark.parametrize("arch", ["resnet18", "inception_v3"])
def test_loaded_weights_end_up_in_the_model(tmp_path, arch):
    torch.manual_seed(1)
    kwargs = {"aux_logits": True, "init_weights": False} if arch == "inception_v3" else {}
    source = torchvision.models.get_model(arch, weights=None, num_classes=1000, **kwargs)
    torch.save(source.state_dict(), tmp_path / "w.pth")
    config = tiny_config(arch=arch, input_size=299 if arch == "inception_v3" else 32, weights=str(tmp_path / "w.pth"))
    model = build_model(config, num_classes=10)
    own, theirs = model.state_dict(), source.state_dict()
    heads = head_keys(arch, **({"aux_logits": True, "init_weights": False, "transform_input": True} if kwargs else {}))
    for key in own:
        if key in heads:
            assert own[key].shape[0] == 10
        else:
            assert torch.equal(own[key], theirs[key]), key
    if arch == "inception_v3":
        assert model.transform_input, "ImageNet Inception weights expect transform_input"


def test_inception_weights_with_an_aux_head_load_into_a_model_without_one(tmp_path):
    # ImageNet's Inception file has the auxiliary head; below 299 px the model has none and ignores those keys.
    torch.manual_seed(1)
    source = torchvision.models.get_model(
        "inception_v3", weights=None, num_classes=1000, aux_logits=True, init_weights=False
    )
    torch.save(source.state_dict(), tmp_path / "w.pth")
    config = tiny_config(arch="inception_v3", input_size=224, aux_logits=False, weights=str(tmp_path / "w.pth"))
    own, theirs = build_model(config, num_classes=3).state_dict(), source.state_dict()
    assert not any(key.startswith("AuxLogits.") for key in own) and own["fc.weight"].shape == (3, 2048)
    assert all(torch.equal(value, theirs[key]) for key, value in own.items() if not key.startswith("fc."))


def test_same_class_count_keeps_the_head(tmp_path):
    source = torchvision.models.resnet18(num_classes=10)
    torch.save({"state_dict": source.state_dict()}, tmp_path / "ckpt.pt")  # a convscope-style checkpoint
    model = build_model(tiny_config(weights=str(tmp_path / "ckpt.pt")), num_classes=10)
    assert torch.equal(model.fc.weight, source.fc.weight)


def test_imagenet_weights_missing_names_the_cache_file(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(
        WeightsError,
        match=r"ImageNet weights for resnet18 not found at .*checkpoints/resnet18-[0-9a-f]+\.pth; download https://",
    ):
        build_model(tiny_config(weights="imagenet"), num_classes=10)


def test_imagenet_weights_come_from_the_local_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    from convscope.models import imagenet_weights_path

    source = torchvision.models.resnet18()
    path = imagenet_weights_path("resnet18")
    path.parent.mkdir(parents=True)
    torch.save(source.state_dict(), path)
    model = build_model(tiny_config(weights="imagenet"), num_classes=10)
    assert torch.equal(model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)


def test_model_kwargs_rebuild_pretrained_inception_with_plain_torchvision(tmp_path):
    from convscope.models import model_kwargs

    source = torchvision.models.get_model(
        "inception_v3", weights=None, num_classes=1000, aux_logits=True, init_weights=False
    )
    torch.save(source.state_dict(), tmp_path / "w.pth")
    config = tiny_config(arch="inception_v3", input_size=299, weights=str(tmp_path / "w.pth"))
    ours = build_model(config, num_classes=3).eval()
    rebuilt = torchvision.models.get_model("inception_v3", num_classes=3, **model_kwargs(config)).eval()
    rebuilt.load_state_dict(ours.state_dict())
    x = torch.randn(1, 3, 299, 299)
    with torch.no_grad():
        assert torch.equal(ours(x), rebuilt(x))


def test_bn_momentum_sets_every_batchnorm_and_null_keeps_the_architectures():
    def momenta(**overrides):
        model = build_model(tiny_config(arch="mobilenet_v3_small", **overrides), 10)
        return {m.momentum for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}

    assert momenta() == {0.01}  # torchvision's MobileNetV3 default
    assert momenta(bn_momentum=0.1) == {0.1}


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small", "inception_v3", "densenet121"])
def test_inference_copy_folds_batchnorm_and_keeps_the_outputs(arch):
    torch.manual_seed(0)
    config = tiny_config(arch=arch, input_size=75 if arch == "inception_v3" else 32, aux_logits=False)
    model = build_model(config, num_classes=5).train()
    for module in model.modules():  # statistics away from the fresh 0/1, so a folding error would show
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5), module.running_var.uniform_(0.5, 2.0)
    x = torch.randn(3, 3, config.input_size, config.input_size)
    copied = inference_copy(model)
    assert model.training and any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()), "original changed"
    # DenseNet normalises before each convolution: nothing to fold into, so its BatchNorms stay.
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in copied.modules()) == (arch == "densenet121")
    with torch.no_grad():
        expected = model.eval()(x)
        torch.testing.assert_close(copied(x), expected, atol=1e-4, rtol=1e-4)
        low = inference_copy(model, torch.bfloat16, channels_last=True)
        assert all(p.dtype == torch.bfloat16 for p in low.parameters())
        assert next(p for p in low.parameters() if p.dim() == 4).is_contiguous(memory_format=torch.channels_last)
        error = (low(x.to(torch.bfloat16)).float() - expected).abs().max()
        assert error < 0.05 * expected.abs().max(), "bf16 rounding, relative to the logits' scale"


class _Branching(torch.nn.Module):
    """A forward with data-dependent control flow, which torch.fx cannot trace."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn(self.conv(x))
        return out if out.sum() > 0 else -out


def test_inference_copy_of_an_untraceable_model_keeps_its_batchnorm():
    torch.manual_seed(0)
    model = _Branching()
    model.bn.running_mean.uniform_(-0.5, 0.5)
    x = torch.randn(2, 3, 8, 8)
    copied = inference_copy(model)
    assert isinstance(copied.bn, torch.nn.BatchNorm2d) and model.training
    with torch.no_grad():
        torch.testing.assert_close(copied(x), model.eval()(x))
