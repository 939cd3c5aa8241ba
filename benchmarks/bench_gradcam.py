"""CPU benchmark: convscope's Grad-CAM engine vs pytorch-grad-cam's GradCAM and captum's LayerGradCam.

For resnet18 (batch 16) and resnet50 (batch 8) at 224 px with random weights, prints a Markdown table of
seconds per batch (median of ``--repeats`` rounds after one warm-up round; the tools take turns within a round),
the ratio to a no-grad forward of the same batch in the same round (median), and the largest absolute difference
of each tool's normalised maps from convscope's, then whether each target is met.

pytorch-grad-cam's multi-layer call averages its layers into one map, so its "4 layers" row times four
separate single-layer calls (what it takes to get the four per-layer maps convscope returns) and compares each.

Usage: python benchmarks/bench_gradcam.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision

from convscope.cam import grad_cam

LAYERS = ["layer1", "layer2", "layer3", "layer4"]


def timed_rounds(candidates: dict[str, Callable[[], object]], repeats: int) -> tuple[dict, dict, dict]:
    """Times every candidate once per round, one warm-up round plus ``repeats`` timed ones.

    Interleaving the candidates means each round's ratios to the round's own forward pass share the machine's
    load at that moment, which keeps the ratios meaningful on a shared CPU.

    Returns:
        Median seconds, median ratio to the "forward" candidate of the same round, and each last result.
    """
    seconds: dict[str, list[float]] = {name: [] for name in candidates}
    results: dict[str, object] = {}
    for round_ in range(repeats + 1):
        for name, fn in candidates.items():
            start = time.perf_counter()
            results[name] = fn()
            if round_:
                seconds[name].append(time.perf_counter() - start)
    ratios = {name: statistics.median(t / f for t, f in zip(ts, seconds["forward"])) for name, ts in seconds.items()}
    return {name: statistics.median(ts) for name, ts in seconds.items()}, ratios, results


def minmax(maps: torch.Tensor) -> torch.Tensor:
    low = maps.amin((1, 2), keepdim=True)
    return (maps - low) / (maps.amax((1, 2), keepdim=True) - low + 1e-7)


def pgc_maps(model: torch.nn.Module, x: torch.Tensor, layer: str, targets: torch.Tensor) -> torch.Tensor:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with GradCAM(model, [model.get_submodule(layer)]) as cam:
        return torch.from_numpy(cam(x, [ClassifierOutputTarget(int(t)) for t in targets]))


def captum_maps(model: torch.nn.Module, x: torch.Tensor, layer: str, targets: torch.Tensor) -> torch.Tensor:
    from captum.attr import LayerGradCam

    raw = LayerGradCam(model, model.get_submodule(layer)).attribute(x, target=targets.tolist())[:, 0].detach()
    # Same post-processing as convscope / pytorch-grad-cam: ReLU, scale, bilinear resize, scale.
    up = F.interpolate(minmax(raw.clamp(min=0))[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return minmax(up)


def bench(arch: str, batch: int, repeats: int) -> tuple[list[tuple], dict[str, float]]:
    """Table rows (name, method, seconds, × forward, max diff) and the target figures for one model."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None).eval()
    x = torch.randn(batch, 3, 224, 224)
    with torch.no_grad():
        targets = model(x).argmax(1)  # fixed up front so every tool explains the same classes

    def forward() -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    candidates = {
        "forward": forward,
        "ours1": lambda: grad_cam(model, x, ["layer4"], targets=targets).maps,
        "ours4": lambda: grad_cam(model, x, LAYERS, targets=targets).maps,
        "pgc1": lambda: {"layer4": pgc_maps(model, x, "layer4", targets)},
        "pgc4": lambda: {layer: pgc_maps(model, x, layer, targets) for layer in LAYERS},
        "captum1": lambda: {"layer4": captum_maps(model, x, "layer4", targets)},
    }
    seconds, ratios, maps = timed_rounds(candidates, repeats)
    model.zero_grad(set_to_none=True)  # pytorch-grad-cam's and captum's backward fill parameter .grad

    def diff(name: str) -> float:
        return max((maps[name][layer] - maps["ours4"][layer]).abs().max().item() for layer in maps[name])

    labels = {
        "forward": "no-grad forward",
        "ours1": "convscope, 1 layer (layer4)",
        "ours4": "convscope, 4 layers at once",
        "pgc1": "pytorch-grad-cam, 1 layer",
        "pgc4": "pytorch-grad-cam, 4 layers (4 single-layer calls)",
        "captum1": "captum LayerGradCam, 1 layer",
    }
    rows = [
        (f"{arch} (batch {batch})", labels[k], seconds[k], ratios[k], "—" if k == "forward" else diff(k))
        for k in candidates
    ]
    figures = {
        "ours1 ×fwd": ratios["ours1"],
        "ours4 ×fwd": ratios["ours4"],
        "speed-up vs pgc, 1 layer": seconds["pgc1"] / seconds["ours1"],
        "speed-up vs pgc, 4 layers": seconds["pgc4"] / seconds["ours4"],
        "max diff vs pgc": max(diff("pgc1"), diff("pgc4")),
    }
    return rows, figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed calls per row after one warm-up (median reported)"
    )
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be ≥ 1, got {args.repeats}")
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore")  # captum and pytorch-grad-cam warn about hooks on every call

    print(f"torch {torch.__version__}, CPU, {threads} threads, 224 px, random weights, median of {args.repeats}\n")
    print("| model | method | s / batch | × forward | max abs diff vs convscope |")
    print("|---|---|---:|---:|---:|")
    summary = {}
    for arch, batch in [("resnet18", 16), ("resnet50", 8)]:
        rows, summary[arch] = bench(arch, batch, args.repeats)
        for name, method, seconds, ratio, diff in rows:
            d = diff if isinstance(diff, str) else f"{diff:.1e}"
            print(f"| {name} | {method} | {seconds:.3f} | {ratio:.2f} | {d} |", flush=True)

    targets = [
        ("ours1 ×fwd", "≤ 1.3", lambda v: v <= 1.3),
        ("ours4 ×fwd", "≤ 1.5", lambda v: v <= 1.5),
        ("speed-up vs pgc, 1 layer", "≥ 2", lambda v: v >= 2),
        ("speed-up vs pgc, 4 layers", "≥ 2", lambda v: v >= 2),
        ("max diff vs pgc", "≤ 1e-4", lambda v: v <= 1e-4),
    ]
    print("\n| target | " + " | ".join(summary) + " |")
    print("|---|" + "---:|" * len(summary))
    for key, goal, ok in targets:
        cells = [f"{v[key]:.2g} {'✓' if ok(v[key]) else '✗'}" for v in summary.values()]
        print(f"| {key} {goal} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
