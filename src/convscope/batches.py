"""Batches of model inputs for training and evaluation, on the device that runs the model.

In-memory datasets (``ArraySource``: shapes, CIFAR-10) take the batched path: the uint8 rows of a batch are
gathered on the host, copied to the device once, and resized, cropped, flipped and normalised there as one tensor
(``BatchTransform``). Image files go through a ``DataLoader`` with worker processes, pinned memory and
non-blocking copies, one PIL transform per image.

Both are deterministic: an epoch's order and augmentation follow from the seed given to ``set_epoch``. On the file
path every image draws its augmentation from a seed of its own, so the result does not depend on the number of
workers or on which worker loads which image.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from convscope.config import ModelConfig
from convscope.data import ArraySource, ImageSource
from convscope.runtime import Setup
from convscope.transforms import BatchTransform, build_transform

Batch = tuple[torch.Tensor, torch.Tensor]


def _epoch_order(n: int, shuffle: bool, generator: torch.Generator) -> torch.Tensor:
    return torch.randperm(n, generator=generator) if shuffle else torch.arange(n)


class ArrayBatches:
    """Batches of an in-memory split, transformed a batch at a time on the setup's device."""

    def __init__(
        self, source: ArraySource, transform: BatchTransform, batch_size: int, setup: Setup, shuffle: bool, drop_last
    ) -> None:
        self.images = source.images  # N×H×W×3 uint8
        self.labels = torch.as_tensor(source.labels, dtype=torch.long)
        self.transform, self.batch_size, self.setup = transform, batch_size, setup
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, 0

    def set_epoch(self, seed: int) -> None:
        self.seed = seed

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        generator = torch.Generator().manual_seed(self.seed)
        order = _epoch_order(len(self.labels), self.shuffle, generator)
        device, pin = self.setup.device, self.setup.device.type == "cuda"
        for rows in order.split(self.batch_size)[: len(self)]:
            # numpy gathers rows of a uint8 array ~50× faster than torch indexing does
            images, labels = torch.from_numpy(self.images[rows.numpy()]), self.labels[rows]
            if pin:
                images, labels = images.pin_memory(), labels.pin_memory()
            images = images.to(device, non_blocking=True).permute(0, 3, 1, 2)  # N×3×H×W view, channels_last
            inputs = self.transform(images, generator).contiguous(memory_format=self.setup.memory_format)
            yield inputs, labels.to(device, non_blocking=True)


class _SeededImages(torch.utils.data.Dataset):
    """``(index, seed)`` → the transformed image ``index``, its random draws seeded by ``seed`` alone."""

    def __init__(self, source: ImageSource, transform) -> None:
        self.source, self.transform = source, transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        i, seed = key
        with torch.random.fork_rng(devices=[]):  # leaves the caller's generator (dropout, ...) alone
            torch.manual_seed(seed)
            return self.transform(self.source.load(i)), self.source.labels[i]


class _EpochSampler(torch.utils.data.Sampler):
    """The epoch's order of images, each with its own augmentation seed drawn from the epoch's seed."""

    def __init__(self, n: int, shuffle: bool) -> None:
        self.n, self.shuffle, self.seed = n, shuffle, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed)
        order = _epoch_order(self.n, self.shuffle, generator)
        seeds = torch.randint(2**62, (self.n,), generator=generator)
        return iter(zip(order.tolist(), seeds.tolist()))


class FileBatches:
    """Batches of image files, decoded and transformed per image by ``setup.workers`` loader processes."""

    def __init__(
        self, source: ImageSource, transform, batch_size: int, setup: Setup, shuffle: bool, drop_last: bool
    ) -> None:
        self.sampler = _EpochSampler(len(source), shuffle)
        self.setup = setup
        self.loader = torch.utils.data.DataLoader(
            _SeededImages(source, transform),
            batch_size=batch_size,
            sampler=self.sampler,
            drop_last=drop_last,
            num_workers=setup.workers,
            pin_memory=setup.device.type == "cuda",
            persistent_workers=setup.workers > 0,  # started once for every epoch, not once per epoch
            prefetch_factor=4 if setup.workers else None,
        )

    def set_epoch(self, seed: int) -> None:
        self.sampler.seed = seed

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        device = self.setup.device
        for inputs, labels in self.loader:
            inputs = inputs.to(device, non_blocking=True).contiguous(memory_format=self.setup.memory_format)
            yield inputs, labels.to(device, non_blocking=True)


def batches(
    source: ImageSource, config: ModelConfig, train: bool, batch_size: int, setup: Setup, drop_last: bool = False
) -> ArrayBatches | FileBatches:
    """The batches of one split for one model: shuffled and augmented for training, in order for evaluation."""
    if isinstance(source, ArraySource):
        return ArrayBatches(source, BatchTransform(config, train), batch_size, setup, train, drop_last)
    return FileBatches(source, build_transform(config, train), batch_size, setup, train, drop_last)
