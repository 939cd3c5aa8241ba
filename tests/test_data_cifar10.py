"""CIFAR-10 reader, on batches fabricated in the real python-pickle layout."""

import pickle
import re
from collections import Counter

import numpy as np
import pytest
from fabricate import CIFAR_CLASSES as CLASSES
from fabricate import cifar_images as fabricate_images
from fabricate import write_cifar as write_cifar_batches
from fabricate import write_cifar_batch as write_batch

from convscope.config import load_config
from convscope.data import DatasetError, cifar10, open_split, prepare_dataset

PER_BATCH = 20  # two images of each class per batch
N_TRAIN, N_TEST = 5 * PER_BATCH, PER_BATCH


def write_cifar(folder):
    """Five train batches and a test batch; returns all images, train rows then test rows."""
    images = fabricate_images(N_TRAIN + N_TEST, 0)
    images[N_TRAIN] = (255, 0, 0)  # the first test image is plain red
    return write_cifar_batches(folder, PER_BATCH, images)


def config(root, **overrides):
    return load_config({"dataset": {"kind": "cifar10", "root": str(root), **overrides}}).dataset


@pytest.fixture
def cifar(tmp_path):
    images = write_cifar(tmp_path / "raw" / "cifar-10-batches-py")
    index = prepare_dataset(config(tmp_path / "raw"), tmp_path / "data")
    return tmp_path, index, images


def test_pixels_round_trip_through_the_batch_layout(cifar):
    tmp_path, index, images = cifar
    assert index.classes == CLASSES and index.root == str((tmp_path / "raw" / "cifar-10-batches-py").resolve())
    for split in ("train", "val", "test"):
        source = open_split(tmp_path / "data" / "index.json", split)
        for i, row in enumerate(index.refs[split]):
            image, label = source[i]
            assert image.mode == "RGB" and image.size == (32, 32)
            assert np.array_equal(np.asarray(image), images[row]) and label == row % 10
    red = open_split(tmp_path / "data" / "index.json", "test").load(0)
    assert red.getpixel((0, 0)) == (255, 0, 0) and red.getpixel((31, 31)) == (255, 0, 0)


def test_splits_are_disjoint_stratified_and_seeded(cifar):
    tmp_path, index, _ = cifar
    refs = {split: set(rows) for split, rows in index.refs.items()}
    assert refs["train"] | refs["val"] == set(range(N_TRAIN)) and not refs["train"] & refs["val"]
    assert index.refs["test"] == list(range(N_TRAIN, N_TRAIN + N_TEST))
    assert Counter(index.labels["val"]) == {label: 1 for label in range(10)}  # 10% of 10 per class
    assert index.counts() == {"train": 90, "val": 10, "test": 20}
    again = prepare_dataset(config(tmp_path / "raw"), tmp_path / "again")
    other = prepare_dataset(config(tmp_path / "raw", split_seed=1), tmp_path / "other")
    assert again.refs == index.refs and other.refs["val"] != index.refs["val"]


def test_root_may_be_the_batch_folder_itself(tmp_path):
    write_cifar(tmp_path / "batches")
    index = prepare_dataset(config(tmp_path / "batches"), tmp_path / "data")
    assert index.root == str((tmp_path / "batches").resolve()) and index.counts()["test"] == N_TEST


def test_splits_read_the_batches_once(cifar, monkeypatch):
    tmp_path, _, _ = cifar
    cifar10._CACHE.clear()
    reads = []
    original = cifar10._unpickle
    monkeypatch.setattr(cifar10, "_unpickle", lambda path: reads.append(path.name) or original(path))
    for split in ("train", "val", "test"):
        open_split(tmp_path / "data" / "index.json", split)
    assert sorted(reads) == sorted(["batches.meta", "test_batch"] + [f"data_batch_{i}" for i in range(1, 6)])


def test_missing_batch_names_the_expected_file(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="cifar-10-batches-py/batches.meta' not found.*cifar-10-python.tar.gz"):
        prepare_dataset(config(tmp_path / "empty"), tmp_path / "data")
    write_cifar(tmp_path / "partial")
    (tmp_path / "partial" / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match=re.escape(f"'{tmp_path / 'partial' / 'data_batch_3'}' not found")):
        prepare_dataset(config(tmp_path / "partial"), tmp_path / "data")


def test_corrupt_or_misshapen_batch_is_named(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    (folder / "data_batch_2").write_bytes(np.random.default_rng(0).bytes(500))
    with pytest.raises(DatasetError, match="data_batch_2' is not a readable pickle"):
        prepare_dataset(config(tmp_path), tmp_path / "data")
    write_batch(folder / "data_batch_2", fabricate_images(PER_BATCH, 0), list(range(10)) * 2)
    bad = {b"data": np.zeros((PER_BATCH, 3000), np.uint8), b"labels": list(range(10)) * 2}
    (folder / "test_batch").write_bytes(pickle.dumps(bad))
    with pytest.raises(DatasetError, match=r"test_batch' has data uint8 \(20, 3000\)"):
        prepare_dataset(config(tmp_path), tmp_path / "data")


def test_batches_changed_after_prepare_ask_for_prepare_again(cifar):
    tmp_path, _, _ = cifar
    folder = tmp_path / "raw" / "cifar-10-batches-py"
    write_batch(folder / "data_batch_1", fabricate_images(PER_BATCH, 0), [9 - i % 10 for i in range(PER_BATCH)])
    cifar10._CACHE.clear()  # as in a later process; a same-size rewrite can keep the mtime within a clock tick
    with pytest.raises(DatasetError, match="changed since they were indexed; rerun the prepare_data step"):
        open_split(tmp_path / "data" / "index.json", "train")


class _RunsCode:
    """What an attacker pickles: unpickling it calls ``os.system``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("protocol", [2, 5])
def test_malicious_batch_runs_nothing_and_names_the_file_and_type(tmp_path, protocol):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    marker = tmp_path / "pwned"
    payload = {b"data": np.zeros((PER_BATCH, 3072), np.uint8), b"labels": _RunsCode(marker)}
    (folder / "data_batch_1").write_bytes(pickle.dumps(payload, protocol=protocol))
    with pytest.raises(DatasetError, match=r"data_batch_1' tries to build (posix|os)\.system .*nothing was run"):
        prepare_dataset(config(tmp_path), tmp_path / "data")
    assert not marker.exists()


def test_batches_pickled_with_every_protocol_still_read(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    for protocol in (2, 5):
        images = fabricate_images(PER_BATCH, 0)
        write_batch(folder / "data_batch_1", images, list(range(10)) * 2)
        batch = pickle.loads((folder / "data_batch_1").read_bytes())
        (folder / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=protocol))
        cifar10._CACHE.clear()
        assert np.array_equal(cifar10.load(folder)["images"][:PER_BATCH], images)
