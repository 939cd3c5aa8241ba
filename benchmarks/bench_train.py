"""CPU benchmark of training and evaluation throughput against the model's own raw speed (prints tables).

For the default config's models (shapes, 72 px) and each profile's models at their real input sizes (CIFAR-10:
32 px uint8 arrays resized to 256 and cropped to 224; Caltech-256: JPEG files of ~300×250 px resized to 256/342
and cropped to 224/299), on synthetic data of that shape and dtype, random weights, a few steps each:

- loader img/s: the batches alone (convscope.batches), and for in-memory data the per-image PIL path it replaced;
- raw img/s: forward + backward + optimiser step on one pre-made batch, per precision (the memory format that
  precision gets by convscope.runtime's rule);
- training img/s: convscope.training.train_epoch over real batches at the setup ``runtime.precision: auto`` picks,
  and its ratio to raw at that precision;
- evaluation img/s: convscope.training.evaluate_loader over real batches (fp32, as the evaluate job), and its
  ratio to a raw no-grad forward of one pre-made batch.

Then the image-folder loader's capacity for the Caltech-256 recipe (decode JPEG, resize 256, random crop 224,
flip) in one process, and the workers that takes to feed 2,000 img/s.

Batches are smaller than the profiles' on the big models so the whole script runs in a few minutes on 2 cores.
Ratios are medians over ``--repeats`` rounds in which raw and real batches take turns.

Usage: python benchmarks/bench_train.py [--threads 2] [--repeats 2] [--only resnet18 ...]
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from convscope import runtime
from convscope.batches import batches
from convscope.config import load_config, read_yaml
from convscope.data import ArraySource
from convscope.data.imagefolder import FileSource
from convscope.models import build_model
from convscope.training import _logits_and_loss, _optimizer, _scheduler, evaluate_loader, train_epoch
from convscope.transforms import build_transform

CLASSES = 10
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "config" / "config.yaml"
TARGET_IMAGES_PER_S = 2000
EVAL_BATCHES = 4  # as the default test split (600 images at eval_batch_size 128: 5 batches)


@dataclass
class Case:
    profile: str
    arch: str
    input_size: int
    batch: int
    steps: int
    image: tuple[int, int]  # stored image height, width
    files: bool = False  # JPEG files (image folder) rather than an in-memory array
    eval_batch: int = 0  # evaluation batch (0: as training)
    model: dict = field(default_factory=dict)  # further model config keys


def default_cases() -> list[Case]:
    """The default config's models as it trains them: its image size, batches, optimisers and evaluation batch."""
    raw = read_yaml(DEFAULT_CONFIG)
    config = load_config(raw)
    side, evaluation = config.dataset.shapes.image_size, config.runtime.eval_batch_size
    cases = []
    for entry, model in zip(raw["models"], config.models):
        extra = {key: value for key, value in entry.items() if key not in ("name", "arch", "input_size", "batch_size")}
        # 16 steps for MobileNets: their steps are short enough that a round of 8 is mostly the epoch's fixed cost
        steps = 16 if model.arch.startswith("mobilenet") else 8
        cases.append(
            Case(
                "default", model.arch, model.input_size, model.batch_size, steps, (side, side), False, evaluation, extra
            )
        )
    return cases


CASES = [
    *default_cases(),
    Case("cifar10", "resnet18", 224, 16, 3, (32, 32), model={"preprocessing": {"resize": 256, "crop": "random"}}),
    Case(
        "caltech256",
        "resnet50",
        224,
        8,
        3,
        (250, 300),
        True,
        model={"preprocessing": {"resize": 256, "crop": "random"}},
    ),
    Case(
        "caltech256",
        "inception_v3",
        299,
        4,
        2,
        (250, 300),
        True,
        model={"preprocessing": {"resize": 342, "crop": "random"}},
    ),
]


def model_config(case: Case):
    entry = {"name": case.arch, "arch": case.arch, "input_size": case.input_size, "batch_size": case.batch}
    return load_config({"models": [entry | case.model]}).models[0]


def fabricate_jpegs(folder: Path, n: int, size: tuple[int, int]) -> list[str]:
    """``n`` JPEGs of Caltech-256's typical size (noise over smooth gradients, so they compress like photos)."""
    rng = np.random.default_rng(0)
    h, w = size
    rows, cols = np.mgrid[0:h, 0:w]
    refs = []
    for i in range(n):
        base = np.stack([(rows * (i % 5 + 1) + cols) % 256, (cols * 2) % 256, (rows + i * 7) % 256], -1)
        pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        ref = f"{i % CLASSES:03d}/{i:04d}.jpg"
        (folder / ref).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / ref, quality=90)
        refs.append(ref)
    return refs


def source_of(case: Case, n: int, jpeg_dir: Path, refs: list[str]):
    labels = [i % CLASSES for i in range(n)]
    classes = [str(i) for i in range(CLASSES)]
    if case.files:
        return FileSource(jpeg_dir, [refs[i % len(refs)] for i in range(n)], classes, labels)
    images = np.random.default_rng(0).integers(0, 256, (n, *case.image, 3), dtype=np.uint8)
    return ArraySource(classes, labels, images)


def rate(images: int, fn, *args) -> float:
    """Images per second of ``fn(*args)``."""
    start = time.perf_counter()
    fn(*args)
    return images / (time.perf_counter() - start)


def drain(loader) -> None:
    for _ in loader:
        pass


def raw_steps(model, setup, config, inputs, labels, steps: int) -> None:
    """Forward, backward and a step of the model's own optimiser on the same pre-made batch, ``steps`` times."""
    optimizer = _optimizer(model, config)
    criterion = torch.nn.CrossEntropyLoss()
    model.train()
    for _ in range(steps):
        with setup.autocast():
            _, loss = _logits_and_loss(model, inputs, labels, criterion)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


@torch.no_grad()
def raw_forward(model, inputs, steps: int) -> None:
    model.eval()
    for _ in range(steps):
        model(inputs)


def bench(case: Case, repeats: int, jpeg_dir: Path, refs: list[str]) -> dict:
    config = model_config(case)
    torch.manual_seed(0)
    model = build_model(config, CLASSES)
    auto = runtime.resolve(model, "cpu")
    precisions = ["fp32"] + (["bf16"] if runtime.cpu_has_native_bf16() else [])
    n = case.batch * case.steps
    source = source_of(case, n, jpeg_dir, refs)
    row: dict = {"case": case, "auto": auto}

    per_image = None
    if not case.files:  # the per-image PIL path the batched one replaced
        source.transform = build_transform(config, train=True)
        old = torch.utils.data.DataLoader(source, batch_size=case.batch, shuffle=True)
        per_image = rate(n, drain, old)
        source.transform = None
    train_batches = batches(source, config, True, case.batch, auto)
    row["loader"], row["loader_per_image"] = rate(n, drain, train_batches), per_image
    inputs, labels = next(iter(train_batches))

    raw: dict[str, list[float]] = {p: [] for p in precisions}
    trained, evaluated, ratios, eval_ratios = [], [], [], []
    fp32 = runtime.Setup(auto.device, "fp32", runtime.pick_channels_last("fp32", auto.device, model), 0)
    eval_batch = case.eval_batch or case.batch
    eval_source = source_of(case, eval_batch * EVAL_BATCHES, jpeg_dir, refs)
    eval_batches = batches(eval_source, config, False, eval_batch, fp32)
    eval_inputs = next(iter(eval_batches))[0]
    for round_ in range(repeats + 1):  # round 0 warms up
        for precision in precisions:
            setup = runtime.Setup(
                auto.device, precision, runtime.pick_channels_last(precision, auto.device, model), auto.workers
            )
            setup.prepare(model)
            x = inputs.contiguous(memory_format=setup.memory_format)
            raw[precision].append(rate(n, raw_steps, model, setup, config, x, labels, case.steps))
        auto.prepare(model)
        optimizer = _optimizer(model, config)
        scheduler = _scheduler(optimizer, config, case.steps)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        criterion = torch.nn.CrossEntropyLoss()
        train_batches.set_epoch(round_)
        model.train()
        args = (model, train_batches, optimizer, scheduler, scaler, criterion, auto, config, round_)
        trained.append(rate(n, train_epoch, *args))
        fp32.prepare(model)
        forward = rate(eval_batch * EVAL_BATCHES, raw_forward, model, eval_inputs, EVAL_BATCHES)
        evaluated.append(rate(eval_batch * EVAL_BATCHES, evaluate_loader, model, eval_batches, fp32))
        if round_:
            ratios.append(trained[-1] / raw[auto.precision][-1])
            eval_ratios.append(evaluated[-1] / forward)
        raw.setdefault("forward", []).append(forward)
    med = {k: statistics.median(v[1:]) for k, v in raw.items()}
    row |= {
        "raw": med,
        "train": statistics.median(trained[1:]),
        "train_ratio": statistics.median(ratios),
        "eval": statistics.median(evaluated[1:]),
        "eval_ratio": statistics.median(eval_ratios),
    }
    return row


def loader_capacity(jpeg_dir: Path, refs: list[str]) -> tuple[float, int]:
    """img/s of the Caltech-256 recipe (decode, resize 256, random crop 224, flip) in one process."""
    case = CASES[3]
    config = model_config(case)
    source = FileSource(jpeg_dir, refs, [str(i) for i in range(CLASSES)], [i % CLASSES for i in range(len(refs))])
    loader = batches(source, config, True, 32, runtime.Setup(torch.device("cpu"), "fp32", False, 0))
    drain(loader)  # warm the page cache
    per_process = statistics.median(rate(len(refs), drain, loader) for _ in range(3))
    return per_process, math.ceil(TARGET_IMAGES_PER_S / per_process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="archs to run (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runtime.set_determinism(True)
    print(f"torch {torch.__version__}, {args.threads} threads, native bf16: {runtime.cpu_has_native_bf16()}\n")
    with tempfile.TemporaryDirectory() as tmp:
        jpeg_dir = Path(tmp)
        refs = fabricate_jpegs(jpeg_dir, 300, CASES[3].image)
        print(
            "| profile | model | input | batch | auto picks | loader img/s (per-image) | raw fp32 | raw bf16 "
            "| training img/s | × raw | evaluation img/s | × raw forward |"
        )
        print("|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
        for case in CASES:
            if args.only and case.arch not in args.only:
                continue
            r = bench(case, args.repeats, jpeg_dir, refs)
            auto = r["auto"]
            picked = f"{auto.precision}{', channels_last' if auto.channels_last else ''}"
            loader = f"{r['loader']:,.0f}" + (f" ({r['loader_per_image']:,.0f})" if r["loader_per_image"] else "")
            bf16 = f"{r['raw']['bf16']:.1f}" if "bf16" in r["raw"] else "–"
            print(
                f"| {case.profile} | {case.arch} | {case.input_size} | {case.batch} | {picked} | {loader} "
                f"| {r['raw']['fp32']:.1f} | {bf16} | {r['train']:.1f} | {r['train_ratio']:.2f} "
                f"| {r['eval']:.1f} | {r['eval_ratio']:.2f} |",
                flush=True,
            )
        per_process, workers = loader_capacity(jpeg_dir, refs)
        print(
            f"\nCaltech-256 recipe (decode ~300×250 JPEG, resize 256, random crop 224, flip): "
            f"{per_process:,.0f} img/s per loader process; {workers} workers to feed {TARGET_IMAGES_PER_S:,} img/s"
        )


if __name__ == "__main__":
    main()
