"""Class activation maps (Grad-CAM, Grad-CAM++, LayerCAM) for many layers from one forward and one backward pass.

Modelled on pytorch-grad-cam's ``base_cam.py``: hook handling lives in :class:`ActivationRecorder`, which
always releases its hooks, and the CAM arithmetic is a few lines in :func:`_layer_cam`. Maps equal
pytorch-grad-cam's (1.5.x) within 1e-4 by repeating its exact sequence: ReLU the low-resolution map, min-max
scale it with ``(x - min) / (max - min + 1e-7)``, resize it to the input size, then min-max scale again (its
``aggregate_multi_layers`` rescales even a single layer). Scaling before the resize is not enough on its own:
bilinear samples at half-pixel centres never land exactly on the extreme low-resolution cells, so the resized
map would stop short of 0 and 1 by up to a few percent. Its resize is ``cv2.resize`` with ``INTER_LINEAR``,
which samples at half-pixel centres and clamps at the border, the same rule as
``F.interpolate(mode="bilinear", align_corners=False, antialias=False)``; we use the latter so the whole
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
from convscope.models import eval_mode, find_layers, logits_of

METHODS = ("gradcam", "gradcam++", "layercam")
METHOD_NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "layercam": "LayerCAM"}


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


def _layer_cam(acts: Tensor, grads: Tensor, method: str) -> Tensor:
    """The un-ReLU'd N×h×w map from N×C×h×w activations and gradients (pytorch-grad-cam's formulas)."""
    if method == "layercam":
        return (grads.clamp(min=0) * acts).sum(1)
    if method == "gradcam":
        weights = grads.mean((2, 3))
    else:  # gradcam++, eq. 19 of arXiv:1710.11063; aij is zeroed where the gradient is exactly 0
        g2 = grads.pow(2)
        aij = g2 / (2 * g2 + acts.sum((2, 3), keepdim=True) * g2 * grads + 1e-6)
        weights = (grads.clamp(min=0) * torch.where(grads != 0, aij, 0)).sum((2, 3))
    return torch.einsum("nc,nchw->nhw", weights, acts)


def _minmax(maps: Tensor) -> Tensor:
    """Scales each N×h×w map to [0, 1] as pytorch-grad-cam's ``scale_cam_image`` does (eps keeps blanks at 0)."""
    low = maps.amin((1, 2), keepdim=True)
    return (maps - low) / (maps.amax((1, 2), keepdim=True) - low + 1e-7)


def grad_cam(
    model: nn.Module,
    inputs: Tensor,
    layers: Sequence[str],
    targets: Tensor | Sequence[int] | None = None,
    method: str = "gradcam",
) -> CamResult:
    """Class activation maps of every requested layer from one forward and one backward pass.

    Gradients are taken only w.r.t. the layers' outputs (``torch.autograd.grad``): no parameter or input
    ``.grad`` is produced. Layers are never averaged together. The model runs in eval mode; each module's
    previous mode and each parameter's ``requires_grad`` are restored afterwards.

    Args:
        model: A classifier returning N×K logits (or an object with ``.logits``).
        inputs: Images, N×C×H×W.
        layers: Module names as in ``model.named_modules()``, each producing an N×C×h×w tensor.
        targets: Class per image (N ints); None explains the predicted (argmax) class.
        method: "gradcam", "gradcam++" or "layercam".

    Returns:
        A :class:`CamResult` with one map per image and layer.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    if not isinstance(inputs, Tensor) or inputs.dim() != 4 or not inputs.is_floating_point() or inputs.shape[0] == 0:
        raise ValueError(f"inputs must be a non-empty floating N×C×H×W tensor, got {shape_of(inputs)}")
    if torch.is_inference_mode_enabled():
        raise ValueError("grad_cam needs gradients; call it outside torch.inference_mode()")
    n, size = inputs.shape[0], tuple(inputs.shape[-2:])
    if targets is not None:
        targets = torch.as_tensor(targets).reshape(-1)
        if targets.is_floating_point() or targets.numel() != n:
            raise ValueError(f"targets must be {n} integer class indices (one per image), got {targets.tolist()}")
    recorder = ActivationRecorder(model, layers, requires_grad=True)

    params = [p for p in model.parameters() if p.requires_grad]
    try:
        # With frozen parameters and a detached input, the graph starts at the first hooked layer, so the
        # backward pass visits only the layers after it and computes no weight gradients.
        for p in params:
            p.requires_grad_(False)
        with torch.enable_grad(), eval_mode(model), recorder:
            logits = logits_of(model(inputs.detach()))
        for name in recorder.layers:
            out = recorder.outputs.get(name)
            if not isinstance(out, Tensor) or out.dim() != 4:
                got = (
                    "it did not run"
                    if out is None
                    else tuple(out.shape)
                    if isinstance(out, Tensor)
                    else type(out).__name__
                )
                raise ValueError(f"layer {name!r} must output an N×C×h×w tensor in the forward pass; got {got}")
        k = logits.shape[1]
        targets = logits.detach().argmax(1) if targets is None else targets.to(device=logits.device, dtype=torch.long)
        if targets.min() < 0 or targets.max() >= k:
            raise ValueError(f"targets must lie in [0, {k}) for this model, got {targets.tolist()}")
        acts = [recorder.outputs[name] for name in recorder.layers]
        selected = logits.gather(1, targets[:, None]).sum()
        # Each image's logit depends only on its own activations, so one backward of the summed logits
        # yields every image's gradient at once.
        grads = torch.autograd.grad(selected, acts, allow_unused=True) if selected.requires_grad else [None] * len(acts)
    finally:
        for p in params:
            p.requires_grad_(True)

    result = CamResult(logits=logits.detach(), targets=targets)
    with torch.no_grad():
        for name, a, g in zip(recorder.layers, acts, grads):
            a = a.detach()
            raw = _layer_cam(a, torch.zeros_like(a) if g is None else g, method).clamp(min=0)
            flags = ~torch.isfinite(raw).all((1, 2)) | (raw.amax((1, 2)) <= 0)
            raw = torch.where(flags[:, None, None], 0, raw)
            upsampled = F.interpolate(_minmax(raw)[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
            result.maps[name] = _minmax(upsampled)
            result.raw[name], result.flags[name] = raw, flags
    return result
