"""Per-model preprocessing: PIL image (or a batch of uint8 images) → normalised float tensor, as the config says."""

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


class BatchTransform:
    """``build_transform`` for a whole batch of uint8 N×3×H×W images of one size, on the batch's device.

    The same steps in the same order; on the CPU the same values as the per-image transform (the same functions do
    the work). Random crops and flips are drawn per image from ``generator``, with the per-image distributions
    (offsets uniform over every valid position, flips with probability 1/2).
    """

    def __init__(self, config: ModelConfig, train: bool) -> None:
        pre = config.preprocessing
        self.side = pre.resize or config.input_size
        self.size = config.input_size
        self.random_crop = train and pre.crop == "random"
        self.hflip = train and pre.hflip
        self.grayscale = pre.grayscale
        self.mean, self.std = list(pre.mean), list(pre.std)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        images = TF.resize(images, [self.side], antialias=True)
        n, size = len(images), self.size
        if self.random_crop:
            tops = torch.randint(0, images.shape[-2] - size + 1, (n,), generator=generator).tolist()
            lefts = torch.randint(0, images.shape[-1] - size + 1, (n,), generator=generator).tolist()
            images = torch.stack([image[:, t : t + size, x : x + size] for image, t, x in zip(images, tops, lefts)])
        else:
            images = TF.center_crop(images, [size])
        if self.hflip:
            flip = (torch.rand(n, generator=generator) < 0.5).to(images.device)
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        if self.grayscale:
            images = TF.rgb_to_grayscale(images, num_output_channels=3)
        return TF.normalize(TF.to_dtype(images, torch.float32, scale=True), self.mean, self.std)


def denormalise(inputs: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """Undoes the normalisation of N×3×H×W model inputs, for display; values clipped to [0,1]."""
    mean = torch.tensor(config.preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(config.preprocessing.std).view(1, 3, 1, 1)
    return (inputs * std + mean).clamp(0, 1)


def display_images(inputs: torch.Tensor, config: ModelConfig) -> np.ndarray:
    """Model inputs as N×H×W×3 float images in [0, 1] for imshow."""
    return denormalise(inputs, config).permute(0, 2, 3, 1).numpy()


def eval_mask(mask: np.ndarray, config: ModelConfig) -> torch.Tensor:
    """An H×W object mask under the evaluation transform's geometry (resize, centre crop; nearest), as float 0/1."""
    tensor = torch.from_numpy(np.asarray(mask, dtype=np.uint8))[None]
    side = config.preprocessing.resize or config.input_size
    tensor = TF.resize(tensor, [side], interpolation=InterpolationMode.NEAREST, antialias=False)
    return TF.center_crop(tensor, [config.input_size])[0].float()
