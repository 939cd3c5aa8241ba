"""Building torchvision classifiers by name, with a new head and optional local weights."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import functools
import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from convscope.config import CLASSIFICATION_ARCHS, IMAGENET_WEIGHTS, ModelConfig
from convscope.errors import ConfigError, LayerError, WeightsError


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
    small = _construct_on_meta(arch, 2, **kwargs).state_dict()
    large = _construct_on_meta(arch, 3, **kwargs).state_dict()
    return frozenset(key for key in small if small[key].shape != large[key].shape)


@functools.cache
def _meta_model(arch: str, kwargs: tuple[tuple[str, Any], ...]) -> nn.Module:
    """The architecture in training mode on the meta device (shapes only: no memory, no compute)."""
    return _construct_on_meta(arch, 2, **dict(kwargs))


def _construct_on_meta(arch: str, num_classes: int, **kwargs) -> nn.Module:
    """The architecture on the meta device: shapes only, no memory and no random initialisation."""
    try:
        with torch.device("meta"):
            return _construct(arch, num_classes, **kwargs)
    except NotImplementedError:  # a few builders (regnet) compute widths from tensor data
        return _construct(arch, num_classes, **kwargs).to("meta")


def _input_size_error(arch: str, kwargs: dict, size: int) -> str | None:
    """None when a training batch of size×size images passes through the model, else the first line of the error."""
    try:
        # Two images: training never runs BatchNorm on a single one (the train step drops such a last batch).
        with torch.no_grad():
            _meta_model(arch, tuple(sorted(kwargs.items())))(torch.empty(2, 3, size, size, device="meta"))
    except (RuntimeError, ValueError, AssertionError) as error:  # what shape checks raise
        return str(error).splitlines()[0]
    return None


LARGEST_INPUT_SIZE = 1024  # the bound of the search for an architecture's smallest input


@functools.cache
def _min_input_size(arch: str, kwargs: tuple[tuple[str, Any], ...]) -> int | None:
    # Bisection below the first size that runs. Every size above a CNN's minimum runs too; an architecture built
    # for one size (ViT) runs only there, and torchvision's weights metadata names it, so it is tried first.
    hints = sorted({weights.meta.get("min_size", (1,))[0] for weights in torchvision.models.get_model_weights(arch)})
    runs = lambda size: _input_size_error(arch, dict(kwargs), size) is None  # noqa: E731
    upper = next((size for size in (*hints, LARGEST_INPUT_SIZE) if runs(size)), None)
    if upper is None:
        return None
    fails = 0
    while upper - fails > 1:
        middle = (fails + upper) // 2
        fails, upper = (fails, middle) if runs(middle) else (middle, upper)
    return upper


def min_input_size(config: ModelConfig) -> int | None:
    """The smallest input side the model runs at with these settings (None: none up to 1024), computed by
    forward passes on the meta device."""
    kwargs = _builder_kwargs(config, config.weights is not None)
    return _min_input_size(config.arch, tuple(sorted(kwargs.items())))


def check_input_size(config: ModelConfig, key: str) -> None:
    """Raises a ConfigError naming ``key``, the input size and the smallest that fits, unless the model runs at it.

    One forward pass on the meta device at ``config.input_size`` (a few milliseconds to a second); the minimum is
    searched only when it fails.
    """
    kwargs = _builder_kwargs(config, config.weights is not None)
    error = _input_size_error(config.arch, kwargs, config.input_size)
    if error is None:
        return
    size, minimum = config.input_size, min_input_size(config)
    if minimum is None:
        raise ConfigError(
            f"{key}.input_size = {size} does not fit {config.arch} ({error}), nor does any size up to "
            f"{LARGEST_INPUT_SIZE}; choose another arch"
        )
    if size > minimum:
        raise ConfigError(f"{key}.input_size = {size} does not fit {config.arch} ({error}); use {minimum}")
    fix = "raise input_size"
    if kwargs.get("aux_logits"):
        without = min_input_size(dataclasses.replace(config, aux_logits=False))
        if without is not None and without < minimum:
            fix = f"set aux_logits: false (needs >= {without}) or raise input_size"
    raise ConfigError(f"{key}.input_size = {size} is too small for {config.arch} (needs >= {minimum}); {fix}")


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
            raise WeightsError(
                f"ImageNet weights for {config.arch} not found at {path}; download "
                f"{url} on a machine with internet and copy it there (or set weights "
                "to a local file)"
            )
        return path
    return Path(config.weights)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Reads a state dict from a weights file: a plain state dict or a convscope checkpoint."""
    if path.is_dir():
        raise WeightsError(f"weights path {str(path)!r} is a directory; set models[].weights to the file inside it")
    if not path.is_file():
        raise WeightsError(f"weights file {str(path)!r} not found; put the file there or fix models[].weights")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or foreign files
        raise WeightsError(
            f"weights file {str(path)!r} cannot be read ({type(error).__name__}); "
            "replace it with a torch state dict saved by torch.save"
        ) from None
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(
            f"weights file {str(path)!r} holds no state dict of tensors; save "
            "one with torch.save(model.state_dict(), path)"
        )
    # Checkpoints saved from DataParallel or torch.compile prefix every key.
    return {key.removeprefix("module.").removeprefix("_orig_mod."): value for key, value in state.items()}


def load_backbone_weights(
    model: nn.Module, state: dict[str, torch.Tensor], heads: frozenset[str], source: str
) -> list[str]:
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
            f"weights file {source!r} does not fit this architecture: {len(missing)} "
            f"missing, {len(unexpected)} unexpected, "
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
        load_weights: False builds the bare architecture on the meta device, for a convscope checkpoint's state dict
            to be loaded into with ``assign=True``.
    """
    pretrained = config.weights is not None
    kwargs = _builder_kwargs(config, pretrained)
    model = (_construct if load_weights else _construct_on_meta)(config.arch, num_classes, **kwargs)
    if pretrained and load_weights:
        path = resolve_weights_path(config)
        state = read_state_dict(path)
        if config.arch == "inception_v3" and not config.aux_logits:
            # ImageNet files carry the auxiliary head; a model built without it (below 299 px) has no place for it.
            state = {key: value for key, value in state.items() if not key.startswith("AuxLogits.")}
        load_backbone_weights(model, state, head_keys(config.arch, **kwargs), str(path))
    if config.bn_momentum is not None:
        # Not in the state dict: a model rebuilt for inference (running statistics frozen) is the same without it.
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = config.bn_momentum
    return model


def model_kwargs(config: ModelConfig) -> dict:
    """The keyword arguments, beyond ``num_classes``, that ``torchvision.models.get_model`` needs to rebuild it."""
    return _builder_kwargs(config, config.weights is not None)


def head_parameter_names(model: nn.Module, config: ModelConfig) -> set[str]:
    """Names of the parameters of the classification head(s)."""
    heads = head_keys(config.arch, **_builder_kwargs(config, config.weights is not None))
    return {name for name, _ in model.named_parameters() if name in heads}


def model_from_checkpoint(checkpoint: dict) -> nn.Module:
    """Rebuilds the trained model stored in a convscope checkpoint dict (weights loaded, eval mode)."""
    config = ModelConfig.from_dict(checkpoint["config"])
    # Every tensor comes from the checkpoint, so the model is built without its random initialisation (0.2 s for
    # resnet18).
    model = build_model(config, checkpoint["num_classes"], load_weights=False)
    # Copies in the default layout, as a plain load would make: a checkpoint saved from a channels_last model holds
    # strides that steer the convolutions to other kernels (outputs moved by ~1e-6).
    state = {key: value.clone(memory_format=torch.contiguous_format) for key, value in checkpoint["state_dict"].items()}
    model.load_state_dict(state, assign=True)
    left = [name for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers()) if tensor.is_meta]
    if left:
        raise RuntimeError(f"{config.arch} has tensors that its state dict does not hold: {left}")
    return model.eval()


def logits_of(output: Any) -> torch.Tensor:
    """The N×K logits of a classifier's output: a tensor, or an object with ``.logits`` (InceptionOutputs)."""
    logits = getattr(output, "logits", output)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else ""
        raise ValueError(
            f"model must return N×K logits (or an object with .logits), got {type(output).__name__}{shape}"
        )
    return logits


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Puts every module in eval mode for the block, then restores each module's own mode."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.training = training


def inference_copy(model: nn.Module, dtype: torch.dtype = torch.float32, channels_last: bool = False) -> nn.Module:
    """A copy of ``model`` for many no-grad forwards: eval mode, each BatchNorm folded into the convolution before
    it, weights in ``dtype``, and ``channels_last`` memory format if asked. The caller's model is left as it was.

    Folding removes a pass over every activation, and weights already in the autocast dtype are not cast again in
    every forward: about 1.2× for resnet18 in bf16 on the CPU (``benchmarks/bench_explain.py``). A model that
    ``torch.fx`` cannot trace keeps its BatchNorms. The outputs equal the model's within ``dtype``'s rounding.
    """
    from torch.fx.experimental.optimization import fuse

    copied = copy.deepcopy(model).eval()
    try:
        copied = fuse(copied)
    except torch.fx.proxy.TraceError:  # data-dependent control flow
        pass
    copied = copied.to(dtype)
    return copied.to(memory_format=torch.channels_last) if channels_last else copied


def stages(model: nn.Module) -> dict[str, nn.Module]:
    """Stages in forward order: the top-level children, a ``features`` Sequential (MobileNet, VGG, …) split up."""
    out: dict[str, nn.Module] = {}
    for name, child in model.named_children():
        if name == "features" and isinstance(child, nn.Sequential):
            out.update({f"{name}.{sub}": block for sub, block in child.named_children()})
        else:
            out[name] = child
    return out


def conv_layers(model: nn.Module) -> dict[str, nn.Conv2d]:
    """Every Conv2d of the model by its ``named_modules`` name, in module order."""
    return {name: module for name, module in model.named_modules() if isinstance(module, nn.Conv2d)}


def conv_module_names(model: nn.Module) -> list[str]:
    """Names of the modules that are or contain a Conv2d, shallowest first (model order within a depth)."""
    names = [
        name
        for name, module in model.named_modules()
        if name and any(isinstance(m, nn.Conv2d) for m in module.modules())
    ]
    return sorted(names, key=lambda name: name.count("."))


_MAX_LISTED = 40


def find_layers(
    model: nn.Module, names: Sequence[str], valid: Sequence[str] | None = None, kind: str = "layer"
) -> list[str]:
    """The layer lookup every figure, CAM and metric uses: ``names`` checked against the model, deduplicated.

    Args:
        model: The model whose modules are named.
        names: Module names as ``model.named_modules()`` gives them.
        valid: The names allowed here (e.g. only Conv2d layers); None allows every module.
        kind: What the names are, for the error message ("layer", "conv layer").

    Raises:
        LayerError: ``names`` is a string or empty, or a name is not valid; the message lists the valid names
            and the closest match.
    """
    modules = dict(model.named_modules())
    allowed = list(valid) if valid is not None else [name for name in modules if name]
    if isinstance(names, str) or not isinstance(names, Sequence):  # list("layer4") would check each letter
        raise LayerError(f"layers must be a list of {kind} names, got {names!r}; write [{names!r}]")
    if not names:
        raise LayerError(f"layers is empty; name at least one {kind} of {type(model).__name__}")
    for name in names:
        if name not in allowed or name not in modules:
            listed = conv_module_names(model) if valid is None else allowed
            shown = ", ".join(listed[:_MAX_LISTED]) + (", …" if len(listed) > _MAX_LISTED else "")
            close = difflib.get_close_matches(str(name), listed, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise LayerError(f"unknown {kind} {name!r} in {type(model).__name__}; {hint}valid {kind}s: {shown}")
    return list(dict.fromkeys(names))


INCEPTION_CAM_LAYERS = ("Mixed_5d", "Mixed_6e", "Mixed_7c")
FEATURE_FAMILIES = ("mobilenet", "efficientnet", "vgg", "densenet")


def _has_conv(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


def default_cam_layers(model: nn.Module, arch: str) -> list[str]:
    """Layers worth explaining for an architecture, shallowest first (the last is the deepest).

    ResNets: ``layer1``..``layer4``; Inception v3: ``Mixed_5d``, ``Mixed_6e``, ``Mixed_7c``; MobileNet,
    EfficientNet, VGG and DenseNet: up to four evenly spaced children of ``features``, ending with its last
    child; anything else: the last top-level child that contains a Conv2d.
    """
    modules = dict(model.named_modules())
    resnet_stages = [f"layer{i}" for i in range(1, 5)]
    if all(name in modules for name in resnet_stages):
        return resnet_stages
    if arch == "inception_v3" and all(name in modules for name in INCEPTION_CAM_LAYERS):
        return list(INCEPTION_CAM_LAYERS)
    features = getattr(model, "features", None)
    if arch.startswith(FEATURE_FAMILIES) and isinstance(features, nn.Module) and len(features) > 0:
        children = list(features.named_children())
        # ReLU/pool/norm children between convs would waste a column, except the last: it is the output.
        candidates = [name for name, child in children[:-1] if _has_conv(child)] + [children[-1][0]]
        count = min(4, len(candidates))
        return [f"features.{candidates[len(candidates) * (i + 1) // count - 1]}" for i in range(count)]
    convs = [name for name, child in model.named_children() if _has_conv(child)]
    if not convs:
        raise LayerError(f"{type(model).__name__} ({arch}) has no Conv2d layer to explain; pass layers explicitly")
    return convs[-1:]
