"""The batched data path and the runtime choices: same values and distributions as the per-image path."""

import numpy as np
import pytest
import torch
import torchvision
from conftest import tiny_config
from PIL import Image

from convscope import runtime
from convscope.batches import ArrayBatches, FileBatches, batches
from convscope.data import ArraySource, ImageSource
from convscope.transforms import BatchTransform, build_transform

CPU = runtime.Setup(torch.device("cpu"), "fp32", False, 0)


def random_images(n: int, side: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "overrides",
    [{"input_size": 32}, {"input_size": 40, "preprocessing": {"resize": 46}}, {"preprocessing": {"grayscale": True}}],
)
def test_batched_evaluation_transform_equals_the_per_image_one(overrides):
    config = tiny_config(**overrides)
    images = random_images(6, 32)
    per_image = torch.stack([build_transform(config, train=False)(Image.fromarray(a)) for a in images])
    batched = BatchTransform(config, train=False)(torch.from_numpy(images).permute(0, 3, 1, 2))
    assert torch.equal(per_image, batched)


def coordinate_image(side: int) -> np.ndarray:
    """Red holds the column, green the row (×6), blue is constant: a crop's offset and flip can be read back."""
    rows, cols = np.mgrid[0:side, 0:side]
    return np.stack([cols * 6, rows * 6, np.full_like(rows, 128)], axis=-1).astype(np.uint8)


def crop_draws(outputs: torch.Tensor, config) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(top offset, left offset, flipped) of each transformed coordinate image."""
    mean, std = (
        torch.tensor(config.preprocessing.mean)[:, None, None],
        torch.tensor(config.preprocessing.std)[:, None, None],
    )
    pixels = ((outputs * std + mean) * 255).round().long() // 6
    top = pixels[:, 1, 0, 0]
    flipped = pixels[:, 0, 0, 0] > pixels[:, 0, 0, -1]
    left = torch.where(flipped, pixels[:, 0, 0, -1], pixels[:, 0, 0, 0])
    return top.numpy(), left.numpy(), flipped.numpy()


def test_batched_training_augmentation_has_the_per_image_distribution():
    image, draws = coordinate_image(40), 1500  # resize to 32 would hide offsets: keep 40 px, crop 32 (9 offsets)
    config = tiny_config(input_size=32, preprocessing={"resize": 40, "crop": "random", "hflip": True})
    torch.manual_seed(0)
    per_image = torch.stack([build_transform(config, train=True)(Image.fromarray(image)) for _ in range(draws)])
    batch = torch.from_numpy(np.repeat(image[None], draws, axis=0)).permute(0, 3, 1, 2)
    batched = BatchTransform(config, train=True)(batch, torch.Generator().manual_seed(1))
    for a, b in zip(crop_draws(per_image, config), crop_draws(batched, config)):
        if a.dtype == bool:  # flip rate 1/2: 4 standard deviations of a binomial share
            assert abs(a.mean() - 0.5) < 0.052 and abs(b.mean() - 0.5) < 0.052
        else:  # offsets 0..8, each 1/9 of the draws
            assert set(a) == set(b) == set(range(9))
            for counts in (np.bincount(a, minlength=9), np.bincount(b, minlength=9)):
                assert np.all(np.abs(counts / draws - 1 / 9) < 4 * np.sqrt((1 / 9) * (8 / 9) / draws))
    means_a, means_b = per_image.mean(dim=(0, 2, 3)), batched.mean(dim=(0, 2, 3))
    assert torch.allclose(means_a, means_b, atol=0.03)


def test_array_batches_cover_the_split_once_per_epoch_and_repeat_with_the_seed():
    config = tiny_config(input_size=32, preprocessing={"resize": 36, "crop": "random"})
    source = ArraySource([str(i) for i in range(10)], list(range(10)) * 2, random_images(20, 32))
    loader = batches(source, config, True, 6, CPU, drop_last=True)
    assert isinstance(loader, ArrayBatches) and len(loader) == 3
    loader.set_epoch(5)
    first = list(loader)
    assert [len(labels) for _, labels in first] == [6, 6, 6] and len(
        set(torch.cat([b[1] for b in first]).tolist())
    ) == 10
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, loader))
    loader.set_epoch(6)
    assert not torch.equal(first[0][0], next(iter(loader))[0])
    evaluation = batches(source, config, False, 8, CPU)
    assert torch.cat([labels for _, labels in evaluation]).tolist() == source.labels


class InMemoryFiles(ImageSource):
    """An image source that is not an ArraySource: it takes the per-image (file) path."""

    def __init__(self, images: np.ndarray) -> None:
        super().__init__(["a", "b"], [i % 2 for i in range(len(images))])
        self.images = images

    def load(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i])


def test_file_batches_augment_each_image_alike_with_any_number_of_workers():
    config = tiny_config(input_size=32, preprocessing={"resize": 40, "crop": "random"})
    source = InMemoryFiles(random_images(10, 32))
    runs = []
    for workers in (0, 2):
        loader = batches(source, config, True, 4, runtime.Setup(torch.device("cpu"), "fp32", False, workers))
        assert isinstance(loader, FileBatches)
        loader.set_epoch(3)
        runs.append(torch.cat([inputs for inputs, _ in loader]))
        loader.set_epoch(4)
        runs.append(torch.cat([inputs for inputs, _ in loader]))
    assert torch.equal(runs[0], runs[2]) and torch.equal(runs[1], runs[3]) and not torch.equal(runs[0], runs[1])


def test_auto_precision_follows_the_measured_rule(monkeypatch):
    cpu = torch.device("cpu")
    with torch.device("meta"):
        resnet, mobilenet = torchvision.models.resnet18(), torchvision.models.mobilenet_v3_small()
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert runtime.resolve(resnet, "cpu").record() == {
        "device": "cpu",
        "precision": "bf16",
        "channels_last": True,
        "workers": 0,
    }
    assert not runtime.pick_channels_last("fp32", cpu, resnet)
    assert (runtime.pick_precision("auto", cpu, mobilenet), runtime.pick_channels_last("fp32", cpu, mobilenet)) == (
        "fp32",
        True,
    )
    assert runtime.pick_precision("fp32", cpu, resnet) == "fp32"
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    assert runtime.pick_precision("auto", cpu, resnet) == "fp32"
    assert runtime.pick_workers("auto", cpu) == 0 and runtime.pick_workers(3, cpu) == 3
    assert runtime.pick_workers("auto", torch.device("cuda")) >= 1
