"""Building torchvision classifiers by name, with a new head and optional local weights."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torchvision
from torch import nn

from convscope.config import CLASSIFICATION_ARCHS, IMAGENET_WEIGHTS, ModelConfig
from convscope.errors import ConfigError, WeightsError


def _builder_kwargs(config: ModelConfig, pretrained: bool) -> dict:
    if config.arch != "inception_v3":
        return {}
    # ImageNet Inception weights expect inputs rescaled to [-1, 1]; transform_input does that
    # from ImageNet-normalised tensors, as torchvision does when it loads them itself.
    return {"aux_logits": config.aux_logits, "init_weights": not pretrained, "transform_input": pretrained}


def _construct(arch: str, num_classes: int, **kwargs) -> nn.Module:
    if arch not in CLASSIFICATION_ARCHS:
        raise ConfigError(f"unknown arch {arch!r}; choose one of: {', '.join(CLASSIFICATION_ARCHS)}")
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)


@functools.cache
def head_keys(arch: str, **kwargs) -> frozenset[str]:
    """State-dict keys of the classification head(s): the ones whose shape depends on the class count.

    Found by building the model twice on the meta device (no memory, no init cost) with
    different class counts, which covers every torchvision family and Inception's aux head.
    """
    try:
        with torch.device("meta"):
            small = _construct(arch, 2, **kwargs).state_dict()
            large = _construct(arch, 3, **kwargs).state_dict()
    except NotImplementedError:  # a few builders (regnet) compute widths from tensor data
        small = _construct(arch, 2, **kwargs).state_dict()
        large = _construct(arch, 3, **kwargs).state_dict()
    return frozenset(key for key in small if small[key].shape != large[key].shape)


def imagenet_weights_path(arch: str) -> Path:
    """Where torchvision's default ImageNet weights for ``arch`` live in the local torch hub cache."""
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def resolve_weights_path(config: ModelConfig) -> Path | None:
    """The local file the model's weights come from, or None for random initialisation."""
    if config.weights is None:
        return None
    if config.weights == IMAGENET_WEIGHTS:
        path = imagenet_weights_path(config.arch)
        if not path.is_file():
            url = torchvision.models.get_model_weights(config.arch).DEFAULT.url
            raise WeightsError(f"ImageNet weights for {config.arch} not found at {path}; download {url} on a machine with internet and copy it there (or set weights to a local file)")
        return path
    return Path(config.weights)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Reads a state dict from a weights file: a plain state dict or a convscope checkpoint."""
    if not path.is_file():
        raise WeightsError(f"weights file {str(path)!r} not found; put the file there or fix models[].weights")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or foreign files
        raise WeightsError(f"weights file {str(path)!r} cannot be read ({type(error).__name__}); replace it with a torch state dict saved by torch.save") from None
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"weights file {str(path)!r} holds no state dict of tensors; save one with torch.save(model.state_dict(), path)")
    # Checkpoints saved from DataParallel or torch.compile prefix every key.
    return {key.removeprefix("module.").removeprefix("_orig_mod."): value for key, value in state.items()}


def load_backbone_weights(model: nn.Module, state: dict[str, torch.Tensor], heads: frozenset[str], source: str) -> list[str]:
    """Copies every non-head tensor of ``state`` into ``model``; returns the head keys it left untouched.

    A head of the same shape (same class count) is copied too. Any other missing,
    unexpected or mis-shaped key is an error: the file belongs to another architecture.
    BatchNorm's ``num_batches_tracked`` counters may be absent: files saved before PyTorch 0.4
    lack them, and ``load_state_dict`` keeps the model's own (as torch does for such files).
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state and k not in heads and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    misshaped = [k for k in own if k in state and k not in heads and state[k].shape != own[k].shape]
    if missing or unexpected or misshaped:
        example = (missing or unexpected or misshaped)[0]
        raise WeightsError(
            f"weights file {source!r} does not fit this architecture: {len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(misshaped)} mis-shaped keys (e.g. {example!r}); use weights saved from the same arch"
        )
    fresh_heads = [k for k in heads if k not in state or state[k].shape != own[k].shape]
    model.load_state_dict({k: v for k, v in state.items() if k not in fresh_heads}, strict=False)
    return sorted(fresh_heads)


def build_model(config: ModelConfig, num_classes: int, load_weights: bool = True) -> nn.Module:
    """Builds ``config.arch`` with a ``num_classes`` head, and loads its configured weights.

    Args:
        config: the model's configuration.
        num_classes: classes of the dataset; the head is replaced when the weights have another count.
        load_weights: False builds the bare architecture (e.g. to load a convscope checkpoint into).
    """
    pretrained = config.weights is not None
    kwargs = _builder_kwargs(config, pretrained)
    model = _construct(config.arch, num_classes, **kwargs)
    if pretrained and load_weights:
        path = resolve_weights_path(config)
        load_backbone_weights(model, read_state_dict(path), head_keys(config.arch, **kwargs), str(path))
    return model


def model_kwargs(config: ModelConfig) -> dict:
    """The keyword arguments, beyond ``num_classes``, that ``torchvision.models.get_model`` needs to rebuild this model."""
    return _builder_kwargs(config, config.weights is not None)


def head_parameter_names(model: nn.Module, config: ModelConfig) -> set[str]:
    """Names of the parameters of the classification head(s)."""
    heads = head_keys(config.arch, **_builder_kwargs(config, config.weights is not None))
    return {name for name, _ in model.named_parameters() if name in heads}


def model_from_checkpoint(checkpoint: dict) -> nn.Module:
    """Rebuilds the trained model stored in a convscope checkpoint dict (weights loaded, eval mode)."""
    config = ModelConfig.from_dict(checkpoint["config"])
    model = build_model(config, checkpoint["num_classes"], load_weights=False)
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()
