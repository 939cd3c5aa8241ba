"""Training and fine-tuning, with deterministic seeding, resume and atomic checkpoints."""

from __future__ import annotations

import dataclasses
import io
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from convscope import runtime
from convscope.batches import batches
from convscope.config import ModelConfig, RuntimeConfig
from convscope.contracts import Checkpoint, Epoch, TrainingRuntime
from convscope.data import open_split
from convscope.errors import TrainingError
from convscope.io import write_atomic, write_json_atomic
from convscope.models import build_model, check_input_size, head_parameter_names, logits_of, model_kwargs
from convscope.runtime import Setup

# Steps between two reads of the running loss and accuracy: each read waits for the device to finish.
SYNC_STEPS = 25


def save_atomic(payload: Any, path: Path) -> None:
    """torch.save through a temporary file and a rename: a crash never leaves half a checkpoint."""
    # Serialised in memory first: torch's own file writer turns "no space left" into an opaque
    # "unexpected pos" RuntimeError, a plain write keeps the OS error that names the cause.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_atomic(path, lambda f: f.write(buffer.getbuffer()))


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Reads a convscope checkpoint (a plain dict, loaded with ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"checkpoint {str(path)!r} not found; run the train step for this model first")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt or foreign files raise several types
        raise TrainingError(
            f"checkpoint {str(path)!r} cannot be read ({type(error).__name__}); delete it and rerun training"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "config" not in checkpoint:
        raise TrainingError(f"checkpoint {str(path)!r} is not a convscope checkpoint; delete it and rerun training")
    return checkpoint


def _read_resume(path: Path) -> dict | None:
    """The training state in ``path``, or None (with a one-line warning) when it is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict):
            return state
        problem = f"holds a {type(state).__name__}, not a training state"
    except Exception as error:  # a truncated or foreign file raises several types; all mean "start over"
        problem = f"cannot be read ({type(error).__name__})"
    # A killed save or a damaged disk must not block every later run: the epochs are redone.
    print(f"convscope: warning: resume file {str(path)!r} {problem}; training from scratch", file=sys.stderr)
    return None


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Per-row bool: is the label among the ``k`` highest logits (k capped at the class count)."""
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)


def _logits_and_loss(model: nn.Module, inputs, labels, criterion) -> tuple[torch.Tensor, torch.Tensor]:
    output = model(inputs)
    if isinstance(output, tuple) and hasattr(output, "aux_logits"):  # InceptionOutputs in training
        # Auxiliary loss weighting of torchvision's reference recipe for InceptionV3.
        return output.logits, criterion(output.logits, labels) + 0.4 * criterion(output.aux_logits, labels)
    logits = output.logits if hasattr(output, "logits") else output
    return logits, criterion(logits, labels)


def _optimizer(model: nn.Module, config: ModelConfig) -> torch.optim.Optimizer:
    heads = head_parameter_names(model, config)
    head = [p for n, p in model.named_parameters() if n in heads]
    backbone = [p for n, p in model.named_parameters() if n not in heads]
    if config.freeze == "backbone":
        for parameter in backbone:
            parameter.requires_grad_(False)
        backbone = []
    groups = [{"params": head, "lr": config.head_lr or config.lr}]
    if backbone:
        groups.append({"params": backbone, "lr": config.lr})
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    return torch.optim.SGD(groups, momentum=0.9, nesterov=True, weight_decay=config.weight_decay)


def _scheduler(optimizer: torch.optim.Optimizer, config: ModelConfig, steps: int):
    if config.lr_schedule == "onecycle":
        peaks = [group["lr"] for group in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=steps, pct_start=0.2)
    if config.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


@torch.no_grad()
def evaluate_loader(
    model: nn.Module, loader, setup: Setup, desc: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32) and labels of every batch of ``loader``, in eval mode, on the CPU."""
    model.eval()
    logits, labels = [], []
    for inputs, batch_labels in tqdm(loader, desc=desc, leave=False, disable=desc is None):
        with setup.autocast():
            logits.append(logits_of(model(inputs)).float())
        labels.append(batch_labels)
    return torch.cat(logits).cpu(), torch.cat(labels).cpu()


def _freeze_backbone_norms(model: nn.Module, heads: set[str]) -> None:
    # A frozen backbone must keep its BatchNorm statistics too, not only its weights.
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(h.startswith(name + ".") for h in heads):
            module.eval()


def _check_finite(config: ModelConfig, epoch: int, bad_step: torch.Tensor, bad_loss: torch.Tensor) -> None:
    if bad_step.item() >= 0:
        raise TrainingError(
            f"{config.name}: loss became {bad_loss.item()} at epoch {epoch + 1}, step {bad_step.item() + 1}; "
            f"lower models[].lr (now {config.lr}) or check the input data"
        )


def train_epoch(
    model: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    scheduler,
    scaler: torch.amp.GradScaler,
    criterion: nn.Module,
    setup: Setup,
    config: ModelConfig,
    epoch: int,
) -> dict[str, float]:
    """One training pass over ``loader``; when it is a tqdm bar, the bar shows the running loss, accuracy and img/s.

    Returns:
        The epoch's mean ``loss``, ``top1`` and ``top5`` over the images seen.
    """
    started, seen, steps = time.perf_counter(), 0, len(loader)
    # Running sums stay on the device; the host reads them every SYNC_STEPS steps, not three times a step.
    zero = torch.zeros((), device=setup.device)
    loss_sum, top1, top5, bad_loss = zero.clone(), zero.clone(), zero.clone(), zero.clone()
    bad_step = torch.full((), -1, device=setup.device)
    for step, (inputs, labels) in enumerate(loader):
        with setup.autocast():
            logits, loss = _logits_and_loss(model, inputs, labels, criterion)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        seen += len(labels)
        loss = loss.detach().float()
        first_bad = (bad_step < 0) & ~torch.isfinite(loss)
        bad_step = torch.where(first_bad, step, bad_step)
        bad_loss = torch.where(first_bad, loss, bad_loss)
        loss_sum += loss * len(labels)
        top1 += topk_correct(logits.detach(), labels, 1).sum()
        top5 += topk_correct(logits.detach(), labels, 5).sum()
        if (step + 1) % SYNC_STEPS == 0 or step + 1 == steps:
            _check_finite(config, epoch, bad_step, bad_loss)
            if hasattr(loader, "set_postfix"):
                loader.set_postfix(
                    loss=f"{loss_sum.item() / seen:.3f}",
                    acc=f"{top1.item() / seen:.3f}",
                    img_s=f"{seen / (time.perf_counter() - started):.0f}",
                )
    return {"loss": loss_sum.item() / seen, "top1": top1.item() / seen, "top5": top5.item() / seen}


def train_model(
    config: ModelConfig,
    index_path: str | Path,
    checkpoint_path: str | Path,
    run: RuntimeConfig | None = None,
    threads: int | None = None,
) -> dict:
    """Trains one model on a prepared dataset and writes its checkpoint atomically.

    The state after every epoch goes to ``resume.pt`` beside the checkpoint; a later call
    with the same config continues from there, so an interrupted run loses at most one
    epoch. Every epoch is seeded from ``config.seed`` and its number, so a resumed run
    ends with the same tensors as an uninterrupted one. ``run`` (default: the schema's
    defaults) says where and how; its ``auto`` precision and workers are resolved by
    ``convscope.runtime`` and the checkpoint's ``runtime`` records what was used.

    Returns:
        The checkpoint dict (see the artifact contract in the README).
    """
    run = run or RuntimeConfig.defaults()
    if threads:
        torch.set_num_threads(threads)
    runtime.set_determinism(run.deterministic)
    checkpoint_path = Path(checkpoint_path)
    resume_path = checkpoint_path.with_name("resume.pt")
    runtime.pick_device(run.device)  # an absent device fails here, before the data is read
    check_input_size(config, f"config models[{config.name!r}]")

    train_set = open_split(index_path, "train")
    val_set = open_split(index_path, "val")
    classes = train_set.classes
    torch.manual_seed(config.seed)
    model = build_model(config, len(classes))
    setup = runtime.resolve(model, run.device, run.precision, run.workers)
    print(f"{config.name}: training on {setup.describe()}")
    model = setup.prepare(model)
    optimizer = _optimizer(model, config)
    scaler = torch.amp.GradScaler(setup.device.type, enabled=setup.precision == "fp16")
    # BatchNorm cannot train on one image where a layer's output is 1×1 (InceptionV3's aux head, a ResNet's
    # layer4 at small inputs), so a last batch of a single image is dropped (a different one every epoch).
    drop_last = len(train_set) % config.batch_size == 1 and len(train_set) > 1
    train_batches = batches(train_set, config, True, config.batch_size, setup, drop_last=drop_last)
    val_batches = batches(val_set, config, False, run.eval_batch_size, setup)
    scheduler = _scheduler(optimizer, config, config.epochs * len(train_batches))
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    heads = head_parameter_names(model, config)
    config_dict = dataclasses.asdict(config)
    run = setup.record()

    history: list[dict] = []
    start_epoch = 0
    state = _read_resume(resume_path)
    if state is not None:
        if state.get("config") == config_dict and state.get("classes") == classes and state.get("runtime") == run:
            model.load_state_dict(state["state_dict"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state.get("scaler", {}))
            history, start_epoch = state["history"], state["epoch"]
            print(f"resuming {config.name} after epoch {start_epoch} from {resume_path}")

    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        torch.manual_seed(config.seed * 1000 + epoch)  # dropout and other in-model draws
        train_batches.set_epoch(config.seed * 1000 + epoch)  # order and augmentation
        model.train()
        if config.freeze == "backbone":
            _freeze_backbone_norms(model, heads)
        bar = tqdm(train_batches, desc=f"{config.name} epoch {epoch + 1}/{config.epochs}", unit="batch")
        sums = train_epoch(model, bar, optimizer, scheduler, scaler, criterion, setup, config, epoch)
        val_logits, val_labels = evaluate_loader(model, val_batches, setup)
        seconds = time.perf_counter() - started
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": sums["loss"],
                "train_top1": sums["top1"],
                "train_top5": sums["top5"],
                "val_loss": nn.functional.cross_entropy(val_logits, val_labels).item(),
                "val_top1": topk_correct(val_logits, val_labels, 1).float().mean().item(),
                "val_top5": topk_correct(val_logits, val_labels, 5).float().mean().item(),
                "lr": optimizer.param_groups[-1]["lr"],
                "seconds": seconds,
            }
        )
        print(
            f"{config.name} epoch {epoch + 1}: train loss {history[-1]['train_loss']:.3f}, "
            f"val top-1 {history[-1]['val_top1']:.3f}, {seconds:.0f} s"
        )
        save_atomic(
            {
                "state_dict": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "history": history,
                "epoch": epoch + 1,
                "config": config_dict,
                "classes": classes,
                "runtime": run,
            },
            resume_path,
        )

    checkpoint = checkpoint_of(model, config, classes, epoch=config.epochs, history=history, run=run)
    save_atomic(checkpoint, checkpoint_path)
    resume_path.unlink(missing_ok=True)
    return checkpoint


def checkpoint_of(
    model: nn.Module, config: ModelConfig, classes: list[str], *, epoch: int, history: list[Epoch], run: TrainingRuntime
) -> Checkpoint:
    """The checkpoint dict of a model (the artifact contract in the README): everything plain torchvision needs to
    rebuild it, its resolved config, its history and how it was trained."""
    return {
        # Plain contiguous CPU tensors, whatever the memory format the model trained in.
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "arch": config.arch,
        "num_classes": len(classes),
        "model_kwargs": model_kwargs(config),
        "classes": classes,
        "input_size": config.input_size,
        "mean": list(config.preprocessing.mean),
        "std": list(config.preprocessing.std),
        "epoch": epoch,
        "config": dataclasses.asdict(config),
        "history": history,
        "runtime": run,
    }


def train(
    model: ModelConfig,
    run: RuntimeConfig,
    index_path: str | Path,
    checkpoint_path: str | Path,
    history_path: str | Path,
    threads: int | None = None,
) -> Checkpoint:
    """The train step: trains one model and writes its checkpoint and its per-epoch history."""
    checkpoint = train_model(model, index_path, checkpoint_path, run, threads)
    write_json_atomic(history_path, checkpoint["history"])
    return checkpoint
