"""How a job uses its hardware: device, numeric precision, memory format, loader workers and determinism.

``runtime.precision: auto`` follows a rule measured on the machines we build on (README, "Speed"):

- CPU with native bf16 (AVX-512 BF16 or AMX): bf16 autocast in channels_last (oneDNN's bf16 convolutions are
  faster in it), except for models with depthwise convolutions (MobileNet, EfficientNet, ConvNeXt, ...), whose
  bf16 backward is slower than fp32 in oneDNN; those train in fp32 in channels_last, which is faster for them
  (and no faster for dense ResNets in fp32).
- CUDA: bf16 where the GPU computes it natively (compute capability 8.0 and up), fp16 with a gradient scaler on
  older GPUs with tensor cores, fp32 otherwise; channels_last whenever the precision is reduced.
- Anything else: fp32.

The choice is a rule, not a timing probe, so the same config on the same machine always trains the same way and
gives the same tensors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os

import torch
from torch import nn

from convscope.contracts import TrainingRuntime
from convscope.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
MAX_AUTO_WORKERS = 8


def available_devices() -> list[str]:
    """The devices torch reports on this machine, in the order ``auto`` prefers them."""
    found = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    return [name for name, available in found.items() if available]


def pick_device(requested: str = "auto") -> torch.device:
    """CUDA, then MPS, then CPU for ``auto``; the named device otherwise.

    Raises:
        ConfigError: the named device is not on this machine.
    """
    available = available_devices()
    if requested == "auto":
        return torch.device(available[0])
    if requested not in available:
        raise ConfigError(
            f"config runtime.device = {requested!r}, but torch finds no {requested} device on this machine "
            f"(available: {', '.join(available)}); set runtime.device to auto or one of those"
        )
    return torch.device(requested)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX-512 BF16 or AMX), not by emulation."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def has_depthwise_convs(model: nn.Module) -> bool:
    """Whether the model has depthwise convolutions (one group per input channel)."""
    return any(isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels for m in model.modules())


def pick_precision(requested: str, device: torch.device, model: nn.Module, backward: bool = True) -> str:
    """fp32, bf16 or fp16: ``requested``, or for ``auto`` the rule of this module's docstring. Without a
    ``backward`` (scoring perturbed images), depthwise models get bf16 too: only their backward is slower in it."""
    if requested not in PRECISIONS:
        raise ConfigError(f"config runtime.precision = {requested!r} is unknown; choose one of {', '.join(PRECISIONS)}")
    if requested != "auto":
        return requested
    if device.type == "cpu":
        slow_in_bf16 = backward and has_depthwise_convs(model)
        return "bf16" if cpu_has_native_bf16() and not slow_in_bf16 else "fp32"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return "bf16"
        return "fp16" if torch.cuda.get_device_capability(device) >= (7, 0) else "fp32"
    return "fp32"


def pick_channels_last(precision: str, device: torch.device, model: nn.Module) -> bool:
    """Whether inputs and weights go channels_last: reduced precision on CUDA or on the CPU, and depthwise models on
    the CPU."""
    if device.type == "cuda":
        return precision != "fp32"
    return device.type == "cpu" and (precision != "fp32" or has_depthwise_convs(model))


def available_cores() -> int:
    """The CPU cores this process may run on (a SLURM or container CPU set counts, not the whole machine)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pick_workers(requested: str | int, device: torch.device) -> int:
    """Loader worker processes for image files: ``requested``, or for ``auto`` none on a CPU device (the model
    needs every core: measured, workers slowed training down on 2 cores) and one per spare core, up to 8, on a
    GPU."""
    if requested != "auto":
        if not isinstance(requested, int) or isinstance(requested, bool) or requested < 0:
            raise ConfigError(f"config runtime.workers = {requested!r}; use auto or a number >= 0")
        return requested
    if device.type == "cpu":
        return 0
    return min(MAX_AUTO_WORKERS, max(available_cores() - 1, 1))


def dtype_of(precision: str) -> torch.dtype:
    """The floating-point type of ``precision`` (fp32, bf16 or fp16)."""
    return _DTYPES.get(precision, torch.float32)


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast to ``precision`` (fp32, bf16 or fp16) for forward passes on ``device`` (a no-op in fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


def set_determinism(deterministic: bool) -> None:
    """Deterministic kernels (and cuBLAS workspaces, cuDNN without autotuning), or the fastest ones.

    Called before anything runs on a GPU: cuBLAS reads ``CUBLAS_WORKSPACE_CONFIG`` when it starts.
    """
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic


@dataclasses.dataclass(frozen=True)
class Setup:
    """How one job runs its model."""

    device: torch.device
    precision: str  # fp32, bf16 or fp16
    channels_last: bool
    workers: int  # loader processes for image files (in-memory arrays never need any)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to the reduced precision for forward passes (a no-op in fp32)."""
        return autocast(self.precision, self.device)

    def prepare(self, model: nn.Module) -> nn.Module:
        """The model on this device, in this memory format."""
        return model.to(self.device, memory_format=self.memory_format)

    def record(self) -> TrainingRuntime:
        """What the checkpoint and the report keep of the setup."""
        return {
            "device": self.device.type,
            "precision": self.precision,
            "channels_last": self.channels_last,
            "workers": self.workers,
        }

    def describe(self) -> str:
        memory = "channels_last" if self.channels_last else "contiguous"
        autocast = "fp32" if self.precision == "fp32" else f"{self.precision} autocast"
        return f"{self.device.type}, {autocast}, {memory}, {self.workers} loader workers"


def resolve(model: nn.Module, device: str = "auto", precision: str = "auto", workers: str | int = "auto") -> Setup:
    """The setup of a job that runs ``model``: the configured values with every ``auto`` decided."""
    run_device = pick_device(device)
    chosen = pick_precision(precision, run_device, model)
    return Setup(
        device=run_device,
        precision=chosen,
        channels_last=pick_channels_last(chosen, run_device, model),
        workers=pick_workers(workers, run_device),
    )
