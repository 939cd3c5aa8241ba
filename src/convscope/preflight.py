"""The config checks that need torch: every model runs at its input size, the device is on this machine.

They run before any job starts (the workflow's ``onstart``, ``convscope check-config``), not when the config is
validated: importing torch and torchvision costs seconds, which every ``snakemake`` call, a no-op included, would pay.
The train job checks its own model again, for runs by hand and on cluster nodes.
"""

from __future__ import annotations

from convscope.config import Config
from convscope.models import check_input_size
from convscope.runtime import pick_device


def check(config: Config, device: bool = True) -> None:
    """Raises a ConfigError naming the first model whose input size does not fit its arch, or a missing device.

    Args:
        config: the validated configuration.
        device: False skips the device check (a cluster's submit host need not have the nodes' GPUs).
    """
    for index, model in enumerate(config.models):
        check_input_size(model, f"config models[{index}]")
    if device:
        pick_device(config.runtime.device)
