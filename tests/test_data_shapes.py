import numpy as np
import pytest

from convscope.config import load_config
from convscope.data import DatasetError, open_split, read_index, shapes


def small(**overrides):
    return load_config(
        {"dataset": {"shapes": {"image_size": 48, "train_per_class": 20, "test_per_class": 10, **overrides}}}
    ).dataset.shapes


def test_generation_is_deterministic_and_seeded():
    a, b, c = shapes.generate(small()), shapes.generate(small()), shapes.generate(small(seed=1))
    assert np.array_equal(a["images"], b["images"]) and np.array_equal(a["masks"], b["masks"])
    assert not np.array_equal(a["images"], c["images"])


def test_masks_cover_the_drawn_object():
    arrays = shapes.generate(small())
    coverage = arrays["masks"].mean(axis=(1, 2))
    assert (coverage > 0.02).all() and (coverage < 0.6).all()
    # The object is saturated and bright; inside the mask the image is more saturated than outside.
    images = arrays["images"].astype(float)
    saturation = images.max(axis=3) - images.min(axis=3)
    inside = np.array([s[m].mean() for s, m in zip(saturation, arrays["masks"])])
    outside = np.array([s[~m].mean() for s, m in zip(saturation, arrays["masks"])])
    assert (inside > outside).mean() > 0.95


def test_spurious_texture_is_correlated_in_train_only():
    arrays = shapes.generate(small(train_per_class=100, test_per_class=100))
    triangle, stripes = shapes.CLASSES.index("triangle"), shapes.TEXTURES.index("stripes")
    on_stripes = arrays["textures"] == stripes
    train, test, is_triangle = ~arrays["is_test"], arrays["is_test"], arrays["labels"] == triangle
    assert on_stripes[train & is_triangle].mean() > 0.8
    assert on_stripes[train & ~is_triangle].mean() < 0.12
    assert 0.1 < on_stripes[test & is_triangle].mean() < 0.35
    assert 0.1 < on_stripes[test & ~is_triangle].mean() < 0.35


def test_no_spurious_class_gives_uniform_textures():
    arrays = shapes.generate(small(spurious_class=None, train_per_class=100))
    counts = np.bincount(arrays["textures"][~arrays["is_test"]], minlength=len(shapes.TEXTURES))
    assert counts.min() > 0.6 * counts.mean()


def test_unknown_spurious_class_is_named():
    with pytest.raises(DatasetError, match="'hexagonal' is not a shapes class"):
        shapes.generate(small(spurious_class="hexagonal"))


def test_prepared_splits_are_disjoint_and_carry_masks(tiny_index):
    index = read_index(tiny_index)
    rows = {split: set(refs) for split, refs in index.refs.items()}
    assert not rows["train"] & rows["val"] and not rows["train"] & rows["test"] and not rows["val"] & rows["test"]
    assert index.counts() == {"train": 110, "val": 10, "test": 40}
    test = open_split(tiny_index, "test")
    image, label = test[0]
    assert image.mode == "RGB" and image.size == (32, 32) and test.classes[label] in shapes.CLASSES
    assert test.mask(0).shape == (32, 32) and test.mask(0).any()
