"""Class activation maps of ten methods at many layers: every gradient method from one forward and one backward pass.

Modelled on pytorch-grad-cam's ``base_cam.py``: hook handling lives in :class:`ActivationRecorder`, which
always releases its hooks, and each method is a few lines of arithmetic on the recorded activations and
gradients (:func:`_gradient_cam`, :func:`_first_component`) or on a batch of masked forwards (:func:`_score_cam`,
:func:`_ablation_cam`). Maps equal pytorch-grad-cam's (1.5.x) within 1e-4 by repeating its exact sequence: ReLU
the low-resolution map, min-max scale it with ``(x - min) / (max - min + 1e-7)``, resize it to the input size,
then min-max scale again (its ``aggregate_multi_layers`` rescales even a single layer). Scaling before the resize
is not enough on its own: bilinear samples at half-pixel centres never land exactly on the extreme
low-resolution cells, so the resized map would stop short of 0 and 1 by up to a few percent. Its resize is
``cv2.resize`` with ``INTER_LINEAR``, which samples at half-pixel centres and clamps at the border, the same rule
as ``F.interpolate(mode="bilinear", align_corners=False, antialias=False)``; we use the latter so the whole
computation stays in torch (equal to cv2 within float rounding, ~1e-7).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convscope.errors import ConfigError
from convscope.methods import GRADIENT_METHODS, METHODS
from convscope.models import eval_mode, find_layers, logits_of


def shape_of(value: object) -> str:
    """A tensor's shape, or another value's type name, for error messages."""
    return str(tuple(value.shape)) if isinstance(value, Tensor) else type(value).__name__


class ActivationRecorder:
    """Context manager that records the outputs of named modules during forward passes.

    Each hooked module's latest output tensor is kept in ``outputs[name]``; the model itself continues with a
    clone, so in-place ops that follow the module (``ReLU(inplace=True)``, ``out += identity``) cannot alter
    the recorded tensor, and gradients taken w.r.t. it are gradients w.r.t. the module's true output.
    Every hook is removed on exit, also when an exception escapes the ``with`` block.

    Args:
        model: The model whose submodules are hooked.
        layers: Module names as in ``model.named_modules()``.
        requires_grad: Make each recorded output part of the autograd graph even when neither the input nor the
            parameters require grad, so that ``torch.autograd.grad`` can be taken w.r.t. it (needs grad mode).

    Raises:
        LayerError: A name is not a module of ``model``.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], requires_grad: bool = False) -> None:
        self.layers = find_layers(model, layers)
        modules = dict(model.named_modules())
        self._modules = {name: modules[name] for name in self.layers}
        self._requires_grad = requires_grad
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self.outputs: dict[str, Any] = {}

    def __enter__(self) -> ActivationRecorder:
        try:
            for name, module in self._modules.items():
                self._handles.append(module.register_forward_hook(self._hook(name)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    def remove(self) -> None:
        """Removes every hook this recorder registered; safe to call twice."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name: str) -> Callable[[nn.Module, object, Any], Any]:
        def record(module: nn.Module, args: object, output: Any) -> Any:
            if not isinstance(output, Tensor):
                self.outputs[name] = output
                return None
            if self._requires_grad and not output.requires_grad and torch.is_grad_enabled():
                # detach() first: the output may alias a caller's tensor (an Identity on the input), whose
                # requires_grad flag must not change.
                output = output.detach().requires_grad_()
            self.outputs[name] = output
            return output.clone()

        return record


@dataclass
class CamResult:
    """Class activation maps of one batch, per layer.

    Attributes:
        logits: Model outputs, N×K, detached.
        targets: Explained class per image, N (long).
        maps: Per layer, N×H×W maps at input size, min-max scaled to [0, 1]; flagged maps are all zeros.
        raw: Per layer, N×h×w ReLU'd maps at the layer's resolution before scaling (for comparing magnitudes
            across images or methods on one scale); flagged maps are all zeros here too.
        flags: Per layer, N bools: True where the map is blank (all zero after ReLU) or had NaN/inf.
    """

    logits: Tensor
    targets: Tensor
    maps: dict[str, Tensor] = field(default_factory=dict)
    raw: dict[str, Tensor] = field(default_factory=dict)
    flags: dict[str, Tensor] = field(default_factory=dict)

    def flag_count(self, layer: str | None = None) -> int:
        """Number of flagged maps, for one layer or summed over all layers."""
        flags = self.flags.values() if layer is None else [self.flags[layer]]
        return int(sum(int(f.sum()) for f in flags))


def _first_component(x: Tensor) -> Tensor:
    """N×h×w projections of each pixel's C-vector on the first principal component of the image's pixels.

    pytorch-grad-cam's ``get_2d_projection``: NaN set to 0, pixels centred, projected on the first right singular
    vector. The SVD's sign is arbitrary (it depends on the LAPACK build), so the sign is fixed as
    pytorch-grad-cam's ``get_2d_projection_with_sign_correction`` fixes it: flipped when ``|min| > |max|``.
    """
    n, _, h, w = x.shape
    pixels = torch.where(x.isnan(), 0, x).flatten(2).transpose(1, 2)  # N×hw×C
    pixels = pixels - pixels.mean(1, keepdim=True)
    vh = torch.linalg.svd(pixels, full_matrices=False).Vh
    projection = (pixels @ vh[:, 0, :, None])[..., 0]
    flip = projection.amin(1).abs() > projection.amax(1).abs()
    return torch.where(flip[:, None], -projection, projection).view(n, h, w)


def _gradient_cam(acts: Tensor, grads: Tensor, method: str) -> Tensor:
    """The un-ReLU'd N×h×w map from N×C×h×w activations and gradients (pytorch-grad-cam's formulas)."""
    if method == "hirescam":
        return (grads * acts).sum(1)
    if method == "gradcam-elementwise":
        return (grads * acts).clamp(min=0).sum(1)
    if method == "layercam":
        return (grads.clamp(min=0) * acts).sum(1)
    if method == "eigengradcam":
        return _first_component(grads * acts)
    if method == "gradcam":
        weights = grads.mean((2, 3))
    elif method == "xgradcam":  # Fu et al. 2020: gradients weighted by each activation's share of its channel
        weights = (grads * acts / (acts.sum((2, 3), keepdim=True) + 1e-7)).sum((2, 3))
    else:  # gradcam++, eq. 19 of arXiv:1710.11063; aij is zeroed where the gradient is exactly 0
        g2 = grads.pow(2)
        aij = g2 / (2 * g2 + acts.sum((2, 3), keepdim=True) * g2 * grads + 1e-6)
        weights = (grads.clamp(min=0) * torch.where(grads != 0, aij, 0)).sum((2, 3))
    return torch.einsum("nc,nchw->nhw", weights, acts)


def _pairs(n: int, c: int, batch_size: int) -> list[tuple[Tensor, Tensor]]:
    """Every (image, channel) pair, in chunks of ``batch_size``: the masked forwards of the perturbation methods."""
    image, channel = torch.arange(n).repeat_interleave(c), torch.arange(c).repeat(n)
    return [(image[chunk], channel[chunk]) for chunk in torch.arange(n * c).split(batch_size)]


def _score_cam(model: nn.Module, inputs: Tensor, acts: Tensor, targets: Tensor, batch_size: int) -> Tensor:
    """Score-CAM (Wang et al. 2020) as pytorch-grad-cam computes it: each channel, upsampled (bilinear,
    ``align_corners=True``) and min-max scaled, masks the input; the softmax over channels of the target logits of
    the masked inputs weights the channels. One forward per image and channel."""
    scores = []
    for i, k in _pairs(*acts.shape[:2], batch_size):
        up = F.interpolate(acts[i, k][:, None], size=inputs.shape[-2:], mode="bilinear", align_corners=True)
        low, high = up.amin((2, 3), keepdim=True), up.amax((2, 3), keepdim=True)
        logits = logits_of(model(inputs[i] * (up - low) / (high - low + 1e-8)))
        scores.append(logits.gather(1, targets[i, None])[:, 0])
    weights = torch.cat(scores).view(acts.shape[:2]).softmax(1)
    return torch.einsum("nc,nchw->nhw", weights, acts)


def _ablation_cam(
    model: nn.Module, layer: nn.Module, inputs: Tensor, acts: Tensor, original: Tensor, targets: Tensor, batch_size: int
) -> Tensor:
    """Ablation-CAM (Desai and Ramaswamy 2020) as pytorch-grad-cam computes it: each channel of the layer's output
    is ablated in turn (set to 0, or to the image's minimum - 1e7 when its activations are not ≥ 0 with a 0); a
    channel's weight is the relative drop of the target logit, ``(original - ablated) / original``. One forward per
    image and channel (the layers before ``layer`` run too; their output is replaced)."""
    low = acts.flatten(1).amin(1)
    value = torch.where(low == 0, 0, low - 1e7)
    ablated: list[Tensor] = []
    handle = layer.register_forward_hook(lambda module, args, output: ablated[-1])
    scores = []
    try:
        for i, k in _pairs(*acts.shape[:2], batch_size):
            batch = acts[i].clone()
            batch[torch.arange(len(i)), k] = value[i, None, None]
            ablated.append(batch)
            scores.append(logits_of(model(inputs[i])).gather(1, targets[i, None])[:, 0])
            ablated.clear()
    finally:
        handle.remove()
    original = original[:, None]
    weights = (original - torch.cat(scores).view(acts.shape[:2])) / original
    return torch.einsum("nc,nchw->nhw", weights, acts)


def _minmax(maps: Tensor) -> Tensor:
    """Scales each N×h×w map to [0, 1] as pytorch-grad-cam's ``scale_cam_image`` does (eps keeps blanks at 0)."""
    low = maps.amin((1, 2), keepdim=True)
    return (maps - low) / (maps.amax((1, 2), keepdim=True) - low + 1e-7)


def check_methods(methods: Sequence[str]) -> list[str]:
    """The CAM methods as a list; ConfigError for a string, an empty list, a repeat or an unknown one."""
    if isinstance(methods, str):  # list("gradcam") would check each letter
        raise ConfigError(f"methods must be a list of method names, got the string {methods!r}; write [{methods!r}]")
    methods = list(methods)
    if not methods:
        raise ConfigError(f"methods is empty; choose at least one of: {', '.join(METHODS)}")
    if len(set(methods)) < len(methods):
        raise ConfigError(f"methods lists a method twice: {methods}")
    unknown = [method for method in methods if method not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method {unknown[0]!r}; choose one of: {', '.join(METHODS)}")
    return methods


def cams(
    model: nn.Module,
    inputs: Tensor,
    layers: Sequence[str],
    methods: Sequence[str] = ("gradcam",),
    targets: Tensor | Sequence[int] | None = None,
    batch_size: int = 64,
) -> dict[str, CamResult]:
    """Class activation maps of every requested method at every requested layer.

    One forward pass records every layer's output; one backward pass (when a gradient method is requested) gives
    every layer's gradient, and each gradient method is then a few tensor operations on the two. EigenCAM needs
    only the forward. Score-CAM and Ablation-CAM add one forward per image and channel of each layer, run
    ``batch_size`` at a time: their cost grows with the channel count (resnet18's layer4: 512 forwards per image).

    Gradients are taken only w.r.t. the layers' outputs (``torch.autograd.grad``): no parameter or input
    ``.grad`` is produced. Layers are never averaged together. The model runs in eval mode; each module's
    previous mode and each parameter's ``requires_grad`` are restored afterwards.

    Args:
        model: A classifier returning N×K logits (or an object with ``.logits``).
        inputs: Images, N×C×H×W.
        layers: Module names as in ``model.named_modules()``, each producing an N×C×h×w tensor.
        methods: From :data:`METHODS`.
        targets: Class per image (N ints); None explains the predicted (argmax) class.
        batch_size: Images per forward pass of Score-CAM's and Ablation-CAM's masked inputs.

    Returns:
        Per method, a :class:`CamResult` with one map per image and layer (all share the logits and targets).
    """
    methods = check_methods(methods)
    if not isinstance(inputs, Tensor) or inputs.dim() != 4 or not inputs.is_floating_point() or inputs.shape[0] == 0:
        raise ValueError(f"inputs must be a non-empty floating N×C×H×W tensor, got {shape_of(inputs)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    needs_grad = any(method in GRADIENT_METHODS for method in methods)
    if needs_grad and torch.is_inference_mode_enabled():
        raise ValueError("gradient CAM methods need gradients; call them outside torch.inference_mode()")
    n, size = inputs.shape[0], tuple(inputs.shape[-2:])
    if targets is not None:
        targets = torch.as_tensor(targets).reshape(-1)
        if targets.is_floating_point() or targets.numel() != n:
            raise ValueError(f"targets must be {n} integer class indices (one per image), got {targets.tolist()}")
    recorder = ActivationRecorder(model, layers, requires_grad=needs_grad)

    params = [p for p in model.parameters() if p.requires_grad]
    with eval_mode(model):
        try:
            # With frozen parameters and a detached input, the graph starts at the first hooked layer, so the
            # backward pass visits only the layers after it and computes no weight gradients.
            for p in params:
                p.requires_grad_(False)
            with torch.set_grad_enabled(needs_grad), recorder:
                logits = logits_of(model(inputs.detach()))
            for name in recorder.layers:
                out = recorder.outputs.get(name)
                if not isinstance(out, Tensor) or out.dim() != 4:
                    got = "it did not run" if out is None else shape_of(out)
                    raise ValueError(f"layer {name!r} must output an N×C×h×w tensor in the forward pass; got {got}")
            k = logits.shape[1]
            targets = logits.detach().argmax(1) if targets is None else targets.to(logits.device, torch.long)
            if targets.min() < 0 or targets.max() >= k:
                raise ValueError(f"targets must lie in [0, {k}) for this model, got {targets.tolist()}")
            acts = [recorder.outputs[name] for name in recorder.layers]
            grads: Sequence[Tensor | None] = [None] * len(acts)
            selected = logits.gather(1, targets[:, None])
            if needs_grad and selected.requires_grad:
                # Each image's logit depends only on its own activations, so one backward of the summed logits
                # yields every image's gradient at once.
                grads = torch.autograd.grad(selected.sum(), acts, allow_unused=True)
        finally:
            for p in params:
                p.requires_grad_(True)

        logits, selected = logits.detach(), selected.detach()[:, 0]
        modules = dict(model.named_modules())
        results = {method: CamResult(logits=logits, targets=targets) for method in methods}
        with torch.no_grad():
            for name, a, g in zip(recorder.layers, acts, grads):
                a = a.detach()
                g = torch.zeros_like(a) if g is None else g
                broken = ~torch.isfinite(a).flatten(1).all(1)  # EigenCAM zeroes NaNs: flag them here
                for method in methods:
                    if method in GRADIENT_METHODS:
                        raw = _gradient_cam(a, g, method)
                    elif method == "eigencam":
                        raw = _first_component(a)
                    elif method == "scorecam":
                        raw = _score_cam(model, inputs, a, targets, batch_size)
                    else:
                        raw = _ablation_cam(model, modules[name], inputs, a, selected, targets, batch_size)
                    _store(results[method], name, raw.clamp(min=0), size, broken)
    return results


def _store(result: CamResult, layer: str, raw: Tensor, size: tuple[int, int], broken: Tensor) -> None:
    """Flags blank and broken ReLU'd maps, and stores them scaled at the layer's and at the input's resolution."""
    flags = broken | ~torch.isfinite(raw).all((1, 2)) | (raw.amax((1, 2)) <= 0)
    raw = torch.where(flags[:, None, None], 0, raw)
    upsampled = F.interpolate(_minmax(raw)[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    result.maps[layer] = _minmax(upsampled)
    result.raw[layer], result.flags[layer] = raw, flags


def grad_cam(
    model: nn.Module,
    inputs: Tensor,
    layers: Sequence[str],
    targets: Tensor | Sequence[int] | None = None,
    method: str = "gradcam",
) -> CamResult:
    """Class activation maps of one method at every requested layer: :func:`cams` for one method.

    Args:
        model: A classifier returning N×K logits (or an object with ``.logits``).
        inputs: Images, N×C×H×W.
        layers: Module names as in ``model.named_modules()``, each producing an N×C×h×w tensor.
        targets: Class per image (N ints); None explains the predicted (argmax) class.
        method: One of :data:`METHODS`.

    Returns:
        A :class:`CamResult` with one map per image and layer.
    """
    return cams(model, inputs, layers, [method], targets)[method]
