"""Per-model preprocessing: PIL image → normalised float tensor, as the config says."""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from convscope.config import ModelConfig


def build_transform(config: ModelConfig, train: bool) -> v2.Compose:
    """The transform of one model: resize, crop, (flip), (grayscale ×3), scale to [0,1], normalise.

    Evaluation always crops at the centre; training uses the configured crop and flips.
    """
    pre = config.preprocessing
    steps: list[v2.Transform] = [v2.ToImage(), v2.Resize(pre.resize or config.input_size, antialias=True)]
    if train and pre.crop == "random":
        steps.append(v2.RandomCrop(config.input_size))
    else:
        steps.append(v2.CenterCrop(config.input_size))
    if train and pre.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if pre.grayscale:
        steps.append(v2.Grayscale(num_output_channels=3))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(pre.mean), list(pre.std))]
    return v2.Compose(steps)


def denormalise(inputs: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """Undoes the normalisation of N×3×H×W model inputs, for display; values clipped to [0,1]."""
    mean = torch.tensor(config.preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(config.preprocessing.std).view(1, 3, 1, 1)
    return (inputs * std + mean).clamp(0, 1)


def eval_mask(mask: np.ndarray, config: ModelConfig) -> torch.Tensor:
    """An H×W object mask under the evaluation transform's geometry (resize, centre crop; nearest), as float 0/1."""
    tensor = torch.from_numpy(np.asarray(mask, dtype=np.uint8))[None]
    side = config.preprocessing.resize or config.input_size
    tensor = TF.resize(tensor, [side], interpolation=InterpolationMode.NEAREST, antialias=False)
    return TF.center_crop(tensor, [config.input_size])[0].float()
