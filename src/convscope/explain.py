"""Numbers that say whether a class activation map can be trusted.

Every function works on a batch: maps are N×H×W tensors at input size where higher means more salient (the
CAM engine's maps lie in [0, 1]), masks are N×H×W object masks (bool or 0/1).

* Localisation, for datasets with object masks: the pointing game (Zhang et al. 2016: is the map's maximum on
  the object, up to a small tolerance?) and the energy-based pointing game (Wang et al. 2020, Score-CAM: the
  share of the map's mass on the object), with two baselines that use the same functions: a Gaussian peaked at
  the image centre and seeded uniform noise.
* Faithfulness, for any dataset: deletion and insertion curves and their areas (RISE, Petsiuk et al. 2018).
* Sanity: cascading randomisation of the weights from the head down (Adebayo et al. 2018); a method whose
  maps barely change as its model is destroyed explains the image, not the model.

A map without a defined maximum (constant, non-finite, or flagged blank by the engine) is *undefined*: the
localisation metrics give NaN for it, and callers leave NaNs out of their means and report how many there were.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from convscope import runtime
from convscope.cam import CamResult, cams, check_methods, grad_cam, shape_of
from convscope.config import ModelConfig
from convscope.data import ImageSource
from convscope.errors import LayerError
from convscope.models import eval_mode, logits_of, stages
from convscope.transforms import eval_mask

TOLERANCE_AT_224 = 15.0  # pointing-game tolerance in pixels at 224 px input (Zhang et al.), scaled to the input side
BLUR_SIGMA_AT_224 = 5.0  # RISE's insertion blur (sigma 5, kernel 11) at 224 px, scaled to the input side
# A method passes the sanity check when the mean Spearman correlation between its maps of the trained and of the
# fully randomised model falls below this: fewer than half of the ranks survive the destruction of every weight.
SANITY_THRESHOLD = 0.5
ROAD_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # Rong et al.'s removal shares
ROAD_NOISE = 0.01  # standard deviation of the imputation noise, as Rong et al. and pytorch-grad-cam


def _check_maps(maps: Tensor, name: str = "maps") -> None:
    if not isinstance(maps, Tensor) or maps.dim() != 3 or not maps.is_floating_point() or maps.numel() == 0:
        raise ValueError(f"{name} must be a non-empty floating N×H×W tensor, got {shape_of(maps)}")


def _check_pair(maps: Tensor, other: Tensor, name: str) -> None:
    _check_maps(maps)
    if not isinstance(other, Tensor) or other.shape != maps.shape:
        raise ValueError(f"{name} must be a tensor of the maps' shape {tuple(maps.shape)}, got {shape_of(other)}")


def _check_flags(flags: Tensor | None, n: int) -> None:
    if flags is not None and (not isinstance(flags, Tensor) or flags.shape != (n,)):
        raise ValueError(f"flags must be a bool tensor of shape ({n},), got {shape_of(flags)}")


# --- localisation ----------------------------------------------------------------------------------------------


def undefined_maps(maps: Tensor, flags: Tensor | None = None) -> Tensor:
    """Per map, True where it has no defined maximum: constant, non-finite, or flagged by the engine.

    Args:
        maps: N×H×W maps.
        flags: Optional N bools from the engine (``CamResult.flags``), True for blank or broken maps.
    """
    _check_maps(maps)
    _check_flags(flags, len(maps))
    high, low = maps.amax((1, 2)), maps.amin((1, 2))  # both propagate NaN, and ±inf shows in one of them
    undefined = ~(torch.isfinite(high) & torch.isfinite(low)) | (high == low)
    return undefined if flags is None else undefined | flags.to(device=maps.device, dtype=torch.bool)


def tolerance_pixels(side: int) -> float:
    """The pointing game's tolerance for an input of ``side`` pixels: 15 px at 224 px, in proportion."""
    return TOLERANCE_AT_224 * side / 224


def dilate(masks: Tensor, radius: float) -> Tensor:
    """N×H×W bool masks grown by a disc of ``radius`` pixels: True within that distance of the object."""
    if not isinstance(masks, Tensor) or masks.dim() != 3:
        raise ValueError(f"masks must be an N×H×W tensor, got {shape_of(masks)}")
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    masks = masks.bool()
    if radius < 1:  # the disc is the pixel itself
        return masks
    # The disc is a stack of horizontal chords: the mask grown along its rows by each chord's half-width (one
    # shifted OR per pixel of width), then shifted up and down into place: ~12× faster than a 1-channel
    # convolution with the disc, and exact.
    h, w = masks.shape[1:]
    r = int(radius)
    chords = [masks]  # chords[k]: grown by k pixels to the left and right
    for k in range(1, min(r, w - 1) + 1):
        chord = chords[-1].clone()
        chord[:, :, k:] |= masks[:, :, :-k]
        chord[:, :, :-k] |= masks[:, :, k:]
        chords.append(chord)
    grown = torch.zeros_like(chords[0])
    for dy in range(-min(r, h - 1), min(r, h - 1) + 1):
        half = math.isqrt(int(radius**2 - dy**2))
        while (half + 1) ** 2 + dy**2 <= radius**2:  # isqrt of the truncated square can fall one short
            half += 1
        chord = chords[min(half, len(chords) - 1)]
        if dy >= 0:
            grown[:, : h - dy] |= chord[:, dy:]
        else:
            grown[:, -dy:] |= chord[:, : h + dy]
    return grown


def pointing_game(maps: Tensor, masks: Tensor, tolerance: float | None = None, flags: Tensor | None = None) -> Tensor:
    """Per map, whether its maximum lies on the object (1) or not (0); NaN for undefined maps.

    The mask is grown by ``tolerance`` pixels first. Where several pixels share the maximum (flat tops left by
    upsampling a coarse map, or a binary map), the score is the share of them that hit, so ties favour no corner.

    Args:
        maps: N×H×W maps.
        masks: N×H×W object masks. With ``tolerance=0`` they are used as given, e.g. masks that
            :func:`dilate` grew once for many maps.
        tolerance: Radius in pixels; None gives :func:`tolerance_pixels` of the input side.
        flags: Optional engine flags (see :func:`undefined_maps`).

    Returns:
        N floats in [0, 1] (0 or 1 for a unique maximum), NaN where the map is undefined.
    """
    _check_pair(maps, masks, "masks")
    tolerance = tolerance_pixels(min(maps.shape[-2:])) if tolerance is None else tolerance
    near = dilate(masks, tolerance)
    undefined = undefined_maps(maps, flags)
    peaks = maps == maps.amax((1, 2), keepdim=True)
    hits = (peaks & near).sum((1, 2)) / peaks.sum((1, 2)).clamp(min=1)
    return torch.where(undefined, torch.nan, hits.to(maps.dtype))


def energy_in_mask(cams: Tensor, masks: Tensor) -> Tensor:
    """Per map, the share of CAM energy inside the mask, ``sum(cam * mask) / sum(cam)``; NaN for an all-zero map."""
    total = cams.sum((1, 2))
    inside = (cams * masks).sum((1, 2))
    return torch.where(total > 0, inside / total.clamp(min=torch.finfo(cams.dtype).tiny), torch.nan)


def energy_pointing_game(maps: Tensor, masks: Tensor, flags: Tensor | None = None) -> Tensor:
    """Per map, the share of its mass inside the object mask (Score-CAM's energy-based pointing game).

    Args:
        maps: N×H×W non-negative maps.
        masks: N×H×W object masks.
        flags: Optional engine flags (see :func:`undefined_maps`).

    Returns:
        N floats in [0, 1]; NaN where the map is undefined, so both pointing games count the same maps.
    """
    _check_pair(maps, masks, "masks")
    if (maps < 0).any():
        raise ValueError(f"maps must be non-negative for an energy share, got a minimum of {maps.min().item():.3g}")
    return torch.where(undefined_maps(maps, flags), torch.nan, energy_in_mask(maps, masks.to(maps.dtype)))


def centre_maps(n: int, height: int, width: int) -> Tensor:
    """N identical maps peaked at the image centre: a Gaussian with sigma a quarter of the shorter side, max 1."""
    y = torch.arange(height, dtype=torch.float32) - (height - 1) / 2
    x = torch.arange(width, dtype=torch.float32) - (width - 1) / 2
    sigma = min(height, width) / 4
    peak = torch.exp(-(y[:, None] ** 2 + x[None] ** 2) / (2 * sigma**2))
    return peak.expand(n, height, width)


def random_maps(n: int, height: int, width: int, seed: int) -> Tensor:
    """N maps of uniform noise in [0, 1), the same for the same seed."""
    return torch.rand(n, height, width, generator=torch.Generator().manual_seed(seed))


# --- faithfulness ----------------------------------------------------------------------------------------------


@dataclass
class Curves:
    """Deletion and insertion curves of a batch of maps.

    Attributes:
        fractions: S+1 shares of the pixels changed at each step, 0 to 1.
        deletion: N×(S+1) softmax probability of the target class as the most salient pixels are deleted.
        insertion: N×(S+1) the same as they are inserted into the blurred image.
    """

    fractions: Tensor
    deletion: Tensor
    insertion: Tensor

    @property
    def deletion_auc(self) -> Tensor:
        """N areas under the deletion curves (lower is better: the map found what the score needs)."""
        return auc(self.deletion, self.fractions)

    @property
    def insertion_auc(self) -> Tensor:
        """N areas under the insertion curves (higher is better)."""
        return auc(self.insertion, self.fractions)


def auc(curves: Tensor, fractions: Tensor) -> Tensor:
    """Trapezoid area under each curve (last dimension) over the fraction axis."""
    return torch.trapezoid(curves, fractions.to(curves.dtype), dim=-1)


def pixel_ranks(maps: Tensor) -> Tensor:
    """Each pixel's rank in its map, 0 for the most salient: a unique order, ties going to the earlier pixel in
    raster order, so a flat region is consumed a fixed number of pixels at a time rather than all at once."""
    _check_maps(maps)
    flat = maps.flatten(1)
    order = flat.argsort(dim=1, descending=True, stable=True)
    positions = torch.arange(flat.shape[1], device=maps.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions).view_as(maps)


def step_counts(num_pixels: int, steps: int) -> Tensor:
    """How many pixels are changed after each of ``steps`` equal steps: ``round(k * num_pixels / steps)``,
    k = 0..steps."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.div(torch.arange(steps + 1) * num_pixels + steps // 2, steps, rounding_mode="floor")


def blurred(inputs: Tensor) -> Tensor:
    """The insertion start: RISE's Gaussian blur (sigma 5, kernel 11 at 224 px), scaled to the input side."""
    sigma = BLUR_SIGMA_AT_224 * min(inputs.shape[-2:]) / 224
    size = 2 * max(1, round(sigma)) + 1
    return TF.gaussian_blur(inputs, [size, size], [sigma, sigma])


def target_probabilities(model: nn.Module, images: Tensor, targets: Tensor, precision: str = "fp32") -> Tensor:
    """The softmax probability of each image's target class, the forward pass autocast to ``precision``."""
    with runtime.autocast(precision, images.device):
        logits = logits_of(model(images)).float()
    if targets.max() >= logits.shape[1]:
        raise ValueError(f"targets must lie in [0, {logits.shape[1]}) for this model, got {targets.tolist()}")
    return logits.softmax(1).gather(1, targets[:, None].to(logits.device))[:, 0]


def score_curve(
    model: nn.Module,
    start: Tensor,
    end: Tensor,
    ranks: Tensor,
    counts: Tensor,
    targets: Tensor,
    batch_size: int,
    precision: str = "fp32",
) -> Tensor:
    """N×(S+1) target probabilities of the step images: ``end`` where a pixel's rank is below the step's count,
    ``start`` elsewhere. The (image, step) pairs are built and scored ``batch_size`` at a time."""
    n, steps = len(start), len(counts)
    if steps == 0:
        return start.new_zeros(n, 0)
    image, step = torch.arange(n).repeat_interleave(steps), torch.arange(steps).repeat(n)
    probabilities = []
    for chunk in torch.arange(n * steps).split(batch_size):
        i, k = image[chunk], step[chunk]
        changed = (ranks[i] < counts[k, None, None].to(ranks.device))[:, None]
        probabilities.append(target_probabilities(model, torch.where(changed, end[i], start[i]), targets[i], precision))
    return torch.cat(probabilities).view(n, steps)


def _check_curve_inputs(inputs: Tensor, maps: Tensor, targets: Tensor | Sequence[int]) -> tuple[int, Tensor]:
    """The image count and the targets as a tensor, after checking that inputs, maps and targets fit together."""
    if not isinstance(inputs, Tensor) or inputs.dim() != 4 or not inputs.is_floating_point() or inputs.shape[0] == 0:
        raise ValueError(f"inputs must be a non-empty floating N×C×H×W tensor, got {shape_of(inputs)}")
    n, _, height, width = inputs.shape
    _check_maps(maps)
    if maps.shape != (n, height, width):
        raise ValueError(f"maps must be N×H×W = {(n, height, width)} to match the inputs, got {tuple(maps.shape)}")
    if not torch.isfinite(maps).all():
        raise ValueError("maps must be finite to rank pixels; replace NaN/inf maps (the engine's maps always are)")
    targets = torch.as_tensor(targets).reshape(-1)
    if targets.is_floating_point() or targets.numel() != n or (targets < 0).any():
        raise ValueError(f"targets must be {n} non-negative integer class indices, got {targets.tolist()}")
    return n, targets


def deletion_insertion(
    model: nn.Module,
    inputs: Tensor,
    maps: Tensor,
    targets: Tensor | Sequence[int],
    steps: int = 16,
    batch_size: int = 64,
    precision: str = "fp32",
) -> Curves:
    """Deletion and insertion curves of each map (RISE protocol).

    Pixels are ranked by the map (see :func:`pixel_ranks`); after step k of ``steps`` the first
    ``round(k * H * W / steps)`` of them, all channels, are replaced. Deletion replaces them with 0, the dataset
    mean in normalised input space; insertion starts from :func:`blurred` inputs and puts the original pixels
    back. The score is the softmax probability of the target class, in eval mode without gradients.

    Args:
        model: A classifier returning N×K logits (its train/eval modes are restored afterwards).
        inputs: N×C×H×W normalised model inputs.
        maps: N×H×W finite maps at input size.
        targets: N class indices, usually the class each map explains.
        steps: Equal steps from 0 to every pixel (the curves have ``steps + 1`` points).
        batch_size: Step images per forward pass.
        precision: Autocast of the forward passes (fp32, bf16 or fp16); the probabilities are fp32.

    Returns:
        The :class:`Curves`.
    """
    n, targets = _check_curve_inputs(inputs, maps, targets)
    height, width = inputs.shape[-2:]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    ranks, counts = pixel_ranks(maps), step_counts(height * width, steps)
    inner = counts[1:-1]
    with eval_mode(model), torch.inference_mode():
        # The curves' ends need no step images: the inputs end insertion and start deletion, and deletion ends on
        # one all-zero image, the same for every input.
        start = blurred(inputs)
        whole = _probabilities(model, inputs, targets, batch_size, precision)
        starts = _probabilities(model, start, targets, batch_size, precision)
        with runtime.autocast(precision, inputs.device):
            empty = logits_of(model(torch.zeros_like(inputs[:1]))).float().softmax(1)[0, targets]
        deleted = score_curve(model, inputs, torch.zeros_like(inputs), ranks, inner, targets, batch_size, precision)
        inserted = score_curve(model, start, inputs, ranks, inner, targets, batch_size, precision)
    deletion = torch.cat([whole[:, None], deleted, empty[:, None]], 1)
    insertion = torch.cat([starts[:, None], inserted, whole[:, None]], 1)
    return Curves(fractions=counts.float() / (height * width), deletion=deletion, insertion=insertion)


def _probabilities(model: nn.Module, images: Tensor, targets: Tensor, batch_size: int, precision: str) -> Tensor:
    return torch.cat(
        [
            target_probabilities(model, x, t, precision)
            for x, t in zip(images.split(batch_size), targets.split(batch_size))
        ]
    )


# --- sanity: cascading randomisation ---------------------------------------------------------------------------


def average_ranks(values: Tensor) -> Tensor:
    """Ranks 1..M along the last dimension, tied values sharing their average rank (``scipy.stats.rankdata``)."""
    ordered, order = values.sort(dim=-1, stable=True)
    positions = torch.arange(values.shape[-1], dtype=torch.float64, device=values.device).expand(ordered.shape)
    starts = torch.ones(ordered.shape, dtype=torch.bool, device=values.device)
    starts[..., 1:] = ordered[..., 1:] != ordered[..., :-1]
    ends = torch.ones_like(starts)
    ends[..., :-1] = starts[..., 1:]
    # Each element's tie group runs from the last start at or before it to the first end at or after it.
    first = torch.where(starts, positions, 0).cummax(-1).values
    last = torch.where(ends, positions, math.inf).flip(-1).cummin(-1).values.flip(-1)
    return torch.empty(ordered.shape, dtype=torch.float64, device=values.device).scatter_(
        -1, order, (first + last) / 2 + 1
    )


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation of each pair of maps (N×… each, compared over all other dimensions).

    Ties get average ranks, as ``scipy.stats.spearmanr``; NaN where either map is constant.
    """
    if not isinstance(a, Tensor) or not isinstance(b, Tensor) or a.shape != b.shape or a.dim() < 2:
        raise ValueError(
            f"spearman needs two tensors of one N×… shape, got {tuple(getattr(a, 'shape', ()))} "
            f"and {tuple(getattr(b, 'shape', ()))}"
        )
    return rank_correlation(average_ranks(a.flatten(1)), average_ranks(b.flatten(1)))


def rank_correlation(ra: Tensor, rb: Tensor) -> Tensor:
    """Spearman's rho from ranks (:func:`average_ranks`) along the last dimension, rows broadcast against each
    other: the Pearson correlation of the ranks. NaN where either row is constant."""
    ra, rb = ra - ra.mean(-1, keepdim=True), rb - rb.mean(-1, keepdim=True)
    return ((ra * rb).sum(-1) / (ra.square().sum(-1) * rb.square().sum(-1)).sqrt()).float()


def ssim(a: Tensor, b: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean structural similarity of each pair of N×H×W maps in [0, 1] (Wang et al. 2004).

    A Gaussian window (``window`` wide, shrunk to fit small maps) slides over the positions where it fits
    whole; constants C1 = 0.01², C2 = 0.03² for a data range of 1. Identical maps score 1.
    """
    _check_pair(a, b, "b")
    window = min(window, *a.shape[-2:])
    window -= 1 - window % 2  # odd, so the window has a centre pixel
    offsets = torch.arange(window, dtype=torch.float32, device=a.device) - (window - 1) / 2
    g = torch.exp(-(offsets**2) / (2 * sigma**2))
    g = g / g.sum()

    def band(size: int) -> Tensor:  # (size - window + 1)×size: row i holds g at columns i..i+window-1
        rows = torch.arange(size - window + 1, device=a.device)[:, None]
        return torch.zeros(size - window + 1, size, device=a.device).scatter_(
            1, rows + torch.arange(window), g.expand(len(rows), -1)
        )

    # The separable Gaussian filter at "valid" positions, as two matrix products: with a single-channel conv2d
    # instead, the SSIM of the sanity check took 4× as long on the CPU.
    down, across = band(a.shape[-2]), band(a.shape[-1]).T

    def smooth(x: Tensor) -> Tensor:
        return down @ x @ across

    a, b = a.float(), b.float()
    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = smooth(a), smooth(b)
    var_a, var_b, cov = smooth(a * a) - mu_a**2, smooth(b * b) - mu_b**2, smooth(a * b) - mu_a * mu_b
    index = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return index.mean((1, 2))


def randomisable_stages(model: nn.Module) -> list[str]:
    """Names of the model's stages (:func:`convscope.figures.stages`) that have parameters, head first."""
    return [name for name, stage in reversed(stages(model).items()) if next(stage.parameters(), None) is not None]


def _reinitialise(stage: nn.Module, seed: int) -> None:
    """Draws the stage's weights afresh: each module's own ``reset_parameters`` (BatchNorm also forgets its running
    statistics); parameters of modules without one are shuffled, which keeps their scale but not their order."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():  # the caller's random stream stays untouched
        torch.manual_seed(seed)
        reset: set[int] = set()
        for module in stage.modules():
            if callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
                reset.update(id(p) for p in module.parameters(recurse=False))
        for p in stage.parameters():
            if id(p) not in reset:
                p.copy_(p.flatten()[torch.randperm(p.numel())].view_as(p))


@dataclass
class Sanity:
    """Maps of one method as a model's stages are randomised one after another, head first.

    Attributes:
        steps: Step k (1-based in prose, 0-based here) randomises ``steps[k]`` on top of every earlier one.
        targets: N explained classes: the trained model's predictions, kept for every step.
        original: N×H×W maps of the trained model.
        undefined: N bools: the original map is undefined (see :func:`undefined_maps`); such images get NaN.
        maps: S×N×H×W maps after each step.
        spearman: S×N rank correlations with the original (0 where the randomised map is undefined: none of its
            order survived).
        ssim: S×N structural similarity with the original.
    """

    steps: list[str]
    targets: Tensor
    original: Tensor
    undefined: Tensor
    maps: Tensor
    spearman: Tensor
    ssim: Tensor

    @property
    def mean_spearman(self) -> Tensor:
        """S means over the images with a defined original map (NaN when there are none)."""
        return self.spearman.nanmean(1)

    @property
    def mean_ssim(self) -> Tensor:
        """S means over the images with a defined original map."""
        return self.ssim.nanmean(1)

    @property
    def passes(self) -> bool | None:
        """Whether the fully randomised maps have lost their order: mean Spearman below :data:`SANITY_THRESHOLD`."""
        final = float(self.mean_spearman[-1])
        return None if math.isnan(final) else final < SANITY_THRESHOLD


def cascading_randomisations(
    model: nn.Module,
    inputs: Tensor,
    layer: str,
    methods: Sequence[str] = ("gradcam",),
    targets: Tensor | Sequence[int] | None = None,
    seed: int = 0,
    trained: dict[str, CamResult] | None = None,
    batch_size: int = 64,
) -> dict[str, Sanity]:
    """Adebayo et al.'s cascading randomisation: maps of the same images and classes as the weights are
    re-initialised stage by stage from the head downward, compared with the trained model's maps. Each step
    computes every method's maps at once (:func:`~convscope.cam.cams`).

    Works on a deep copy: the caller's model, and the global random stream, are left as they were.

    Args:
        model: A classifier.
        inputs: N×C×H×W model inputs.
        layer: The module whose maps are compared.
        methods: CAM methods (:data:`convscope.methods.METHODS`).
        targets: N classes to explain; None takes the trained model's predictions.
        seed: Seed of the re-initialisation (step k uses ``seed + k``).
        trained: The trained model's maps of ``inputs`` at ``layer`` per method, when the caller has them already
            (their targets are then the explained classes); None computes them.
        batch_size: Forwards per batch of the perturbation methods.

    Returns:
        The :class:`Sanity` record of each method.
    """
    methods = check_methods(methods)
    if trained is None:
        trained = cams(model, inputs, [layer], methods, targets=targets, batch_size=batch_size)
    missing = [m for m in methods if m not in trained or layer not in trained[m].maps]
    if missing:
        raise ValueError(f"trained maps lack method {missing[0]!r} at layer {layer!r}")
    targets = trained[methods[0]].targets
    randomised = copy.deepcopy(model)
    names = randomisable_stages(randomised)
    if not names:
        raise LayerError(f"{type(model).__name__} has no stage with parameters to randomise")
    modules = stages(randomised)
    steps: dict[str, list[Tensor]] = {method: [] for method in methods}
    for step, name in enumerate(names):
        _reinitialise(modules[name], seed + step)
        found = cams(randomised, inputs, [layer], methods, targets=targets, batch_size=batch_size)
        for method in methods:
            steps[method].append(found[method].maps[layer])
    out = {}
    for method in methods:
        original, maps = trained[method].maps[layer], torch.stack(steps[method])
        undefined = undefined_maps(original, trained[method].flags[layer])
        s, n = maps.shape[:2]
        pairs = (original.expand_as(maps).reshape(s * n, *original.shape[1:]), maps.reshape(s * n, *original.shape[1:]))
        # The trained maps are ranked once for every step; NaN means a constant randomised map: nothing kept.
        rho = rank_correlation(average_ranks(original.flatten(1)), average_ranks(maps.flatten(2))).nan_to_num(0.0)
        similarity = ssim(*pairs).view(s, n)
        out[method] = Sanity(
            steps=names,
            targets=targets,
            original=original,
            undefined=undefined,
            maps=maps,
            spearman=torch.where(undefined, torch.nan, rho),
            ssim=torch.where(undefined, torch.nan, similarity),
        )
    return out


def cascading_randomisation(
    model: nn.Module,
    inputs: Tensor,
    layer: str,
    method: str = "gradcam",
    targets: Tensor | Sequence[int] | None = None,
    seed: int = 0,
) -> Sanity:
    """:func:`cascading_randomisations` of one method."""
    return cascading_randomisations(model, inputs, layer, [method], targets=targets, seed=seed)[method]


# --- ROAD: remove and debias -----------------------------------------------------------------------------------


def removal_masks(maps: Tensor, fractions: Sequence[float], most_relevant_first: bool) -> Tensor:
    """N×F×H×W bool masks, True where a pixel is removed: at each fraction f the ``round(f * H * W)`` most (or least)
    salient pixels of each map, ranked as :func:`pixel_ranks` ranks them (ties in raster order)."""
    ranks = pixel_ranks(maps)[:, None]
    pixels = ranks.shape[-1] * ranks.shape[-2]
    counts = torch.round(torch.tensor(list(fractions), dtype=torch.float64) * pixels).long().to(ranks.device)
    counts = counts[None, :, None, None]
    return ranks < counts if most_relevant_first else ranks >= pixels - counts


# (dy, dx, weight) in raster order, the pixel itself in the middle: direct neighbours 1/6, diagonal ones 1/12.
_STENCIL = ((-1, -1, 1 / 12), (-1, 0, 1 / 6), (-1, 1, 1 / 12), (0, -1, 1 / 6), (0, 0, 0.0))
_STENCIL += ((0, 1, 1 / 6), (1, -1, 1 / 12), (1, 0, 1 / 6), (1, 1, 1 / 12))
_CENTRE = 4


def impute(
    images: Tensor, removed: Tensor, noise: float = ROAD_NOISE, generator: torch.Generator | None = None
) -> Tensor:
    """ROAD's noisy linear imputation (Rong et al. 2022): each removed pixel becomes the weighted mean of its 8
    neighbours (1/6 for the 4 direct ones, 1/12 for the diagonals; neighbours outside the image drop out), solved
    for all removed pixels of an image at once as one sparse linear system (SuperLU, as pytorch-grad-cam's
    ``spsolve``, but in symmetric mode: the system is symmetric, and that ordering solves it ~1.5× faster with the
    same values), plus Gaussian noise of standard deviation ``noise``. The systems are solved in float32, the
    images' precision: ~10% faster than float64 on the build's maps, within 3e-4 of it (30× below the noise). The
    images' systems are solved on ``torch.get_num_threads()`` threads (SuperLU releases the GIL while it
    factorises; building a system holds it: two threads ran 1.5–1.8× faster than one); the noise is drawn
    afterwards, in order.

    Args:
        images: B×C×H×W images.
        removed: B×H×W bool, True for the pixels to impute; at least one pixel of each image must be kept.
        noise: Standard deviation of the noise added to the imputed pixels.
        generator: Random stream of the noise (drawn per image, C×removed pixels, in batch order).

    Returns:
        B×C×H×W images, equal to ``images`` where nothing was removed.
    """
    out = images.detach().cpu().clone()
    pixels = out.float().numpy()
    with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
        filled = list(pool.map(_linear_fill, pixels, removed.cpu().numpy()))
    for k, (ys, xs, solved) in enumerate(filled):
        if len(ys):
            jitter = torch.randn(solved.shape, generator=generator) * noise
            out[k][:, ys, xs] = torch.from_numpy(solved) + jitter
    return out.to(images.device)


@functools.lru_cache(maxsize=8)
def _stencil_values(h: int, w: int) -> np.ndarray:
    """H×W×9: each pixel's row of the imputation system over the stencil; the centre holds minus the summed weight
    of the neighbours inside the image."""
    inside = np.pad(np.ones((h, w)), 1)
    diagonal = np.zeros((h, w))
    for dy, dx, weight in _STENCIL:
        diagonal -= weight * inside[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
    values = np.array([weight for _, _, weight in _STENCIL]) * np.ones((h, w, 1))
    values[..., _CENTRE] = diagonal
    return values.astype(np.float32)


def _linear_fill(image: np.ndarray, holes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows, columns and C×M solved values of one C×H×W image's removed pixels (see :func:`impute`)."""
    from scipy.sparse import csc_array
    from scipy.sparse.linalg import splu

    c, h, w = image.shape
    ys, xs = np.nonzero(holes)
    n = len(ys)
    if not n:
        return ys, xs, np.zeros((c, 0), np.float32)
    if n == h * w:
        raise ValueError("every pixel of an image is removed: nothing to impute from")
    # Raster-order flat indices into the image padded by one pixel, so that every stencil position exists.
    stride = w + 2
    unknown = np.full((h + 2) * stride, -1)
    centre = (ys + 1) * stride + xs + 1
    unknown[centre] = np.arange(n)
    known = np.zeros((c, h + 2, w + 2), np.float32)
    known[:, 1:-1, 1:-1] = np.where(holes, 0.0, image)
    known = known.reshape(c, -1)
    around = centre[:, None] + np.array([dy * stride + dx for dy, dx, _ in _STENCIL])
    # Unknowns are numbered in raster order, so each row's stencil entries come out with sorted columns: the
    # CSR arrays of the system, which is symmetric, are its CSC arrays.
    columns = unknown[around]
    free = columns >= 0
    rows = np.concatenate(([0], np.cumsum(free.sum(1))))
    system = csc_array((_stencil_values(h, w)[ys, xs][free], columns[free], rows), shape=(n, n))
    rhs = np.zeros((n, c), np.float32)
    for k, (_, _, weight) in enumerate(_STENCIL):
        if k != _CENTRE:  # known neighbours move to the right-hand side (removed ones and the padding hold 0)
            rhs -= weight * known[:, around[:, k]].T
    # Supernodes do not pay on systems this small: without them (relax, panel_size 1) the factorisation ran 1.4×
    # faster on the default build's maps.
    factors = splu(
        system,
        permc_spec="MMD_AT_PLUS_A",
        diag_pivot_thresh=0.0,
        relax=1,
        panel_size=1,
        options={"SymmetricMode": True},
    )
    return ys, xs, factors.solve(rhs).T


@dataclass
class Road:
    """ROAD scores of a batch of maps: the target's softmax probability after imputing the removed pixels.

    Attributes:
        fractions: F shares of the pixels removed.
        morf: N×F, most relevant pixels removed first (lower is better: the map found what the score needs).
        lerf: N×F, least relevant pixels removed first (higher is better).
    """

    fractions: Tensor
    morf: Tensor
    lerf: Tensor


def road(
    model: nn.Module,
    inputs: Tensor,
    maps: Tensor,
    targets: Tensor | Sequence[int],
    fractions: Sequence[float] = ROAD_FRACTIONS,
    noise: float = ROAD_NOISE,
    seed: int = 0,
    batch_size: int = 64,
    precision: str = "fp32",
) -> Road:
    """ROAD (Rong et al. 2022, "remove and debias"): the pixels a map ranks highest (MoRF) or lowest (LeRF) are
    removed at each fraction and filled in by :func:`impute`, so that the filling itself does not give away which
    pixels were removed; the score is the softmax probability of the target class, in eval mode without gradients.

    Args:
        model: A classifier returning N×K logits (its train/eval modes are restored afterwards).
        inputs: N×C×H×W normalised model inputs.
        maps: N×H×W finite maps at input size.
        targets: N class indices, usually the class each map explains.
        fractions: Shares of the pixels removed, each in (0, 1).
        noise: Standard deviation of the imputation noise (in normalised input units).
        seed: Seed of the noise.
        batch_size: Imputed images per forward pass.
        precision: Autocast of the forward passes (fp32, bf16 or fp16); the probabilities are fp32.
    """
    n, targets = _check_curve_inputs(inputs, maps, targets)
    fractions = list(fractions)
    if not fractions or any(not 0 < f < 1 for f in fractions):
        raise ValueError(f"fractions must be shares in (0, 1), got {fractions}")
    generator = torch.Generator().manual_seed(seed)
    scores = {}
    with eval_mode(model), torch.inference_mode():
        for order, first in (("morf", True), ("lerf", False)):
            removed = removal_masks(maps, fractions, first).flatten(0, 1)  # image-major, then fraction
            image = torch.arange(n).repeat_interleave(len(fractions))
            probabilities = []
            for chunk in torch.arange(len(image)).split(batch_size):
                i = image[chunk]
                imputed = impute(inputs[i], removed[chunk], noise, generator)
                probabilities.append(target_probabilities(model, imputed, targets[i], precision))
            scores[order] = torch.cat(probabilities).view(n, len(fractions))
    return Road(fractions=torch.tensor(fractions), **scores)


def summary(values: np.ndarray) -> dict:
    """Mean, (sample) standard deviation and count of the finite values; None where undefined."""
    values = values[np.isfinite(values)]
    return {
        "mean": float(values.mean()) if len(values) else None,
        "std": float(values.std(ddof=1)) if len(values) > 1 else None,
        "n": int(len(values)),
    }


def test_energies(
    model: nn.Module, source: ImageSource, config: ModelConfig, layer: str, method: str, batch_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image of ``source``: the energy share inside the mask of the predicted class's map, whether the
    prediction is right, and the mask's share of the image (what a uniform map would score)."""
    energies, correct, areas = [], [], []
    start = 0
    loader = torch.utils.data.DataLoader(source, batch_size=batch_size)
    for inputs, labels in tqdm(loader, desc=f"{config.name} CAM energy in mask", unit="batch"):
        result = grad_cam(model, inputs, [layer], method=method)
        masks = torch.stack([eval_mask(source.mask(i), config) for i in range(start, start + len(labels))])
        energies.append(energy_in_mask(result.maps[layer], masks))
        correct.append(result.targets == labels)
        areas.append(masks.mean((1, 2)))
        start += len(labels)
    return torch.cat(energies).numpy(), torch.cat(correct).numpy(), torch.cat(areas).numpy()
