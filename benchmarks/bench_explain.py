"""CPU benchmark: the cost of each explanation-quality metric of convscope.explain, per image.

For resnet18 at 72 px (the default config's input) and resnet50 at 224 px, with random weights, random inputs
and square object masks, prints a Markdown table of milliseconds per image (median of ``--repeats`` rounds after
one warm-up round; the metrics take turns within a round) and the ratio to a no-grad forward pass of the same
image in the same round. The maps are computed once, outside the timed metrics, except where a metric makes its
own (the sanity check recomputes the maps after each randomisation step).

Rows: the maps themselves (Grad-CAM at the four ResNet stages, one call; every gradient method and EigenCAM at
the four stages, one call); the pointing game (mask dilation included) and the energy share over those four
layers; deletion and insertion of the deepest layer's maps (``--steps`` steps); ROAD (MoRF and LeRF at 9
fractions, imputation included); deletion and ROAD again on the explain job's scoring model in bf16 (BatchNorm
folded, bf16 weights, channels_last: what its ``auto`` precision picks on a CPU with native bf16); the
cascading-randomisation sanity check (one method, one layer, 7 stages).

A second table times each CAM method alone at layer4, convscope beside pytorch-grad-cam on the same batch
(Score-CAM and Ablation-CAM, one forward per image and channel, on 2 images of resnet18 only).

Usage: python benchmarks/bench_explain.py [--threads 2] [--repeats 3] [--steps 16] [--models resnet18 resnet50]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import pytorch_grad_cam as pgc
import torch
import torchvision
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import Tensor, nn

from convscope import explain
from convscope.cam import cams, grad_cam
from convscope.explanations import scoring_model
from convscope.methods import GRADIENT_METHODS, METHOD_NAMES, METHODS, REFERENCE_CLASSES

LAYERS = ["layer1", "layer2", "layer3", "layer4"]
RUNS = {"resnet18": (72, 32), "resnet50": (224, 4)}  # arch: (input side, batch)
REFERENCE = {method: getattr(pgc, name) for method, name in REFERENCE_CLASSES.items()}
PERTURBATION_BATCH = 2  # images for Score-CAM and Ablation-CAM (512 forwards each at layer4)


def timed_rounds(
    candidates: dict[str, Callable[[], object]], repeats: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Median seconds of each candidate over ``repeats`` rounds after one warm-up round, and the median ratio to the
    "forward" candidate of the same round (interleaving keeps ratios meaningful on a shared CPU)."""
    seconds: dict[str, list[float]] = {name: [] for name in candidates}
    for round_ in range(repeats + 1):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            if round_:
                seconds[name].append(time.perf_counter() - start)
    ratios = {name: statistics.median(t / f for t, f in zip(ts, seconds["forward"])) for name, ts in seconds.items()}
    return {name: statistics.median(ts) for name, ts in seconds.items()}, ratios


def bench(arch: str, side: int, batch: int, steps: int, repeats: int) -> list[tuple[str, str, float, float]]:
    """Rows (model, metric, ms per image, × forward) for one model."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None, num_classes=10).eval()
    x = torch.randn(batch, 3, side, side)
    masks = torch.zeros(batch, side, side, dtype=torch.bool)
    masks[:, side // 4 : 3 * side // 4, side // 3 : 5 * side // 6] = True
    found = grad_cam(model, x, LAYERS)
    deepest, targets = found.maps[LAYERS[-1]], found.targets
    ranks, counts = explain.pixel_ranks(deepest), explain.step_counts(side * side, steps)

    def forward() -> torch.Tensor:
        with torch.inference_mode():
            return model(x)

    def curve(start: torch.Tensor, end: torch.Tensor, precision: str = "fp32", scorer: nn.Module = model) -> Tensor:
        # One curve alone, as deletion_insertion runs it (it always runs both).
        with torch.inference_mode():
            return explain.score_curve(scorer, start, end, ranks, counts, targets, 64, precision)

    scorer = scoring_model(model, "bf16")  # as the explain job scores bf16 forwards

    blurred = explain.blurred(x)
    candidates = {
        "forward": forward,
        "maps": lambda: grad_cam(model, x, LAYERS),
        "all_maps": lambda: cams(model, x, LAYERS, [*GRADIENT_METHODS, "eigencam"]),
        "pointing": lambda: [
            explain.pointing_game(found.maps[layer], masks, flags=found.flags[layer]) for layer in LAYERS
        ],
        "energy": lambda: [
            explain.energy_pointing_game(found.maps[layer], masks, flags=found.flags[layer]) for layer in LAYERS
        ],
        "deletion": lambda: curve(x, torch.zeros_like(x)),
        "insertion": lambda: curve(blurred, x),
        "road": lambda: explain.road(model, x, deepest, targets),
        "deletion_bf16": lambda: curve(x, torch.zeros_like(x), "bf16", scorer),
        "road_bf16": lambda: explain.road(scorer, x, deepest, targets, precision="bf16"),
        "sanity": lambda: explain.cascading_randomisation(model, x, LAYERS[-1], targets=targets),
    }
    seconds, ratios = timed_rounds(candidates, repeats)
    labels = {
        "forward": "no-grad forward (reference)",
        "maps": "Grad-CAM maps, 4 layers in one call",
        "all_maps": "8 methods' maps (7 gradient + EigenCAM), 4 layers in one call",
        "pointing": "pointing game, 4 layers (with mask dilation)",
        "energy": "energy pointing game, 4 layers",
        "deletion": f"deletion curve, {steps} steps",
        "insertion": f"insertion curve, {steps} steps (blur excluded)",
        "road": f"ROAD, MoRF and LeRF at {len(explain.ROAD_FRACTIONS)} fractions",
        "deletion_bf16": f"deletion curve, {steps} steps, bf16 scoring model (the explain job's auto here)",
        "road_bf16": "ROAD, bf16 scoring model",
        "sanity": f"sanity check, 1 method, {len(explain.randomisable_stages(model))} stages",
    }
    return [(f"{arch} ({side} px, batch {batch})", labels[k], 1000 * seconds[k] / batch, ratios[k]) for k in candidates]


def bench_methods(arch: str, side: int, batch: int, repeats: int) -> list[tuple[str, str, float, float, float, float]]:
    """Rows (model, method, convscope ms/image, × forward, pytorch-grad-cam ms/image, × forward), each method alone
    at layer4 on the same batch."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None, num_classes=10).eval()
    rows = []
    for method in METHODS:
        perturbation = method in ("scorecam", "ablationcam")
        if perturbation and arch != "resnet18":
            continue
        n = PERTURBATION_BATCH if perturbation else batch
        x = torch.randn(n, 3, side, side)
        targets = [ClassifierOutputTarget(int(t)) for t in model(x).argmax(1)]

        def forward(x: torch.Tensor = x) -> torch.Tensor:
            with torch.inference_mode():
                return model(x)

        def theirs(method: str = method, x: torch.Tensor = x, targets: list = targets) -> object:
            with REFERENCE[method](model, [model.layer4]) as cam:
                cam.batch_size = 64
                out = cam(x, targets)
            model.zero_grad(set_to_none=True)
            return out

        candidates = {
            "forward": forward,
            "ours": lambda method=method, x=x: cams(model, x, ["layer4"], [method]),
            "theirs": theirs,
        }
        seconds, ratios = timed_rounds(candidates, 1 if perturbation else repeats)
        rows.append(
            (
                f"{arch} ({side} px, batch {n})",
                METHOD_NAMES[method],
                1000 * seconds["ours"] / n,
                ratios["ours"],
                1000 * seconds["theirs"] / n,
                ratios["theirs"],
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads", type=int, default=2, help="torch intra-op threads (default 2, as the workflow's figure jobs)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after one warm-up (median reported)")
    parser.add_argument("--steps", type=int, default=16, help="deletion/insertion steps")
    parser.add_argument("--models", nargs="+", choices=list(RUNS), default=list(RUNS), help="which models to time")
    args = parser.parse_args()
    for name in ("threads", "repeats", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be ≥ 1, got {getattr(args, name)}")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")

    print(f"torch {torch.__version__}, CPU, {args.threads} threads, random weights, median of {args.repeats}\n")
    print("| model | metric | ms / image | × forward |")
    print("|---|---|---:|---:|")
    for arch in args.models:
        side, batch = RUNS[arch]
        for name, metric, ms, ratio in bench(arch, side, batch, args.steps, args.repeats):
            print(f"| {name} | {metric} | {ms:.2f} | {ratio:.2f} |", flush=True)
    print("\n| model | method (layer4) | convscope ms / image | × forward | pytorch-grad-cam ms / image | × forward |")
    print("|---|---|---:|---:|---:|---:|")
    for arch in args.models:
        side, batch = RUNS[arch]
        for name, method, ms, ratio, theirs, their_ratio in bench_methods(arch, side, batch, args.repeats):
            print(f"| {name} | {method} | {ms:.2f} | {ratio:.2f} | {theirs:.2f} | {their_ratio:.2f} |", flush=True)


if __name__ == "__main__":
    main()
