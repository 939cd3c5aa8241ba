"""Image-folder reader, on a Caltech-256-style folder fabricated with real image files."""

import re
from collections import Counter

import numpy as np
import pytest
from fabricate import save_image as save
from PIL import Image

from convscope.config import load_config
from convscope.data import DatasetError, open_split, prepare_dataset, read_index

CLASS_FOLDERS = ["001.ak47", "002.laptop-101", "003.t-shirt", "257.clutter"]
CORRUPT = "001.ak47/bad.jpg"


def rgba_half_transparent() -> Image.Image:
    """Left half fully transparent black, right half opaque red."""
    image = Image.new("RGBA", (10, 6), (0, 0, 0, 0))
    image.paste((255, 0, 0, 255), (5, 0, 10, 6))
    return image


def palette_half_transparent() -> Image.Image:
    """Palette image: index 0 (black, transparent) on the left, index 1 (blue) on the right."""
    image = Image.new("P", (8, 6), 0)
    image.putpalette([0, 0, 0, 0, 0, 255])
    image.paste(1, (4, 0, 8, 6))
    return image


def write_folder(root) -> dict[str, tuple[int, int]]:
    """Five readable images per class in many formats and modes, plus clutter; returns {ref: size}."""
    sizes = {}

    def add(ref: str, image: Image.Image, **options) -> None:
        save(image, root / ref, **options)
        sizes[ref] = image.size

    for k in range(5):
        add(f"001.ak47/001_{k:04d}.jpg", Image.new("RGB", (12 + k, 10), (0, 200, 0)), quality=95)
    for k in range(4):
        add(f"002.laptop-101/002_{k:04d}.png", Image.new("L", (9, 7 + k), 100))
    add("002.laptop-101/002_0004.png", Image.fromarray(np.full((5, 6), 128 * 257, np.uint16)))  # I;16
    add("003.t-shirt/003_0000.jpg", Image.new("CMYK", (8, 8), (0, 255, 255, 0)))
    add("003.t-shirt/003_0001.png", rgba_half_transparent())
    add("003.t-shirt/003_0002.png", palette_half_transparent(), transparency=0)
    add("003.t-shirt/003_0003.bmp", Image.new("RGB", (7, 7), (10, 20, 30)))
    add("003.t-shirt/003_0004.gif", Image.new("RGB", (6, 9), (255, 255, 0)))
    for k in range(4):
        add(f"257.clutter/257_{k:04d}.PNG", Image.new("RGB", (5 + k, 5), (k, k, k)))
    add("257.clutter/257_0004.webp", Image.new("RGB", (11, 4), (0, 0, 255)), lossless=True)
    (root / CORRUPT).write_bytes(np.random.default_rng(0).bytes(300))
    save(Image.new("RGB", (4, 4)), root / "001.ak47" / "._001_0000.jpg")  # macOS resource-fork clutter
    (root / "003.t-shirt" / "notes.txt").write_text("not an image")
    return sizes


def config(root, **overrides):
    fractions = {"test_fraction": 0.2, "val_fraction": 0.25}
    return load_config({"dataset": {"kind": "imagefolder", "root": str(root), **fractions, **overrides}}).dataset


@pytest.fixture
def folder(tmp_path):
    sizes = write_folder(tmp_path / "caltech")
    return tmp_path / "caltech", sizes


def test_classes_are_cleaned_and_every_mode_loads_as_rgb(folder, tmp_path):
    root, sizes = folder
    index = prepare_dataset(config(root), tmp_path / "data")
    assert index.classes == ["ak47", "laptop-101", "t-shirt", "clutter"] and index.root == str(root.resolve())
    loaded = {}
    for split in ("train", "val", "test"):
        source = open_split(tmp_path / "data" / "index.json", split)
        for i, ref in enumerate(index.refs[split]):
            image, label = source[i]
            assert image.mode == "RGB" and image.size == sizes[ref], ref
            assert ref.startswith(CLASS_FOLDERS[label])
            loaded[ref] = image
    assert set(loaded) == set(sizes)  # hidden files, text and the corrupt file are not indexed
    rgba, palette = loaded["003.t-shirt/003_0001.png"], loaded["003.t-shirt/003_0002.png"]
    assert rgba.getpixel((0, 0)) == (255, 255, 255) and rgba.getpixel((9, 5)) == (255, 0, 0)
    assert palette.getpixel((0, 0)) == (255, 255, 255) and palette.getpixel((7, 5)) == (0, 0, 255)
    assert loaded["002.laptop-101/002_0000.png"].getpixel((0, 0)) == (100, 100, 100)
    assert loaded["002.laptop-101/002_0004.png"].getpixel((0, 0)) == (128, 128, 128)
    cmyk_red = np.asarray(loaded["003.t-shirt/003_0000.jpg"], dtype=int)
    assert (cmyk_red[..., 0] > 230).all() and (cmyk_red[..., 1:] < 25).all()


def test_skip_mode_lists_and_counts_the_corrupt_file(folder, tmp_path, capsys):
    root, sizes = folder
    prepare_dataset(config(root, on_corrupt="skip"), tmp_path / "data")
    assert f"skipped 1 unreadable image(s): {CORRUPT}" in capsys.readouterr().err.splitlines()
    index = read_index(tmp_path / "data" / "index.json")
    assert index.skipped == [CORRUPT] and sum(index.counts().values()) == len(sizes)


def test_fail_mode_names_the_corrupt_file(folder, tmp_path):
    root, _ = folder
    with pytest.raises(
        DatasetError, match=f"1 unreadable image.*{CORRUPT}; delete them or set dataset.on_corrupt: skip"
    ):
        prepare_dataset(config(root, on_corrupt="fail"), tmp_path / "data")


def test_splits_are_disjoint_stratified_and_seeded(folder, tmp_path):
    root, sizes = folder
    index = prepare_dataset(config(root), tmp_path / "a")
    refs = {split: set(r) for split, r in index.refs.items()}
    assert refs["train"] | refs["val"] | refs["test"] == set(sizes)
    assert sum(map(len, refs.values())) == len(sizes)
    # Per class of five: one test image (20%), then one of the remaining four for validation (25%).
    assert [Counter(index.labels[s]) for s in ("train", "val", "test")] == [
        Counter({c: n for c in range(4)}) for n in (3, 1, 1)
    ]
    assert prepare_dataset(config(root), tmp_path / "b").refs == index.refs
    assert prepare_dataset(config(root, split_seed=1), tmp_path / "c").refs != index.refs


def test_split_folders_are_respected(tmp_path):
    root = tmp_path / "split"
    for split, n in (("train", 6), ("test", 2)):
        for name in ("cat", "dog"):
            for k in range(n):
                save(Image.new("RGB", (4, 4)), root / split / name / f"{k}.png")
    index = prepare_dataset(config(root), tmp_path / "data")
    assert index.classes == ["cat", "dog"]
    assert sorted(index.refs["test"]) == [f"test/{c}/{k}.png" for c in ("cat", "dog") for k in range(2)]
    assert all(r.startswith("train/") for r in index.refs["train"] + index.refs["val"])
    assert Counter(index.labels["val"]) == {0: 2, 1: 2}  # 25% of six, rounded, per class
    save(Image.new("RGB", (4, 4)), root / "val" / "dog" / "v.png")
    with_val = prepare_dataset(config(root), tmp_path / "data")
    assert with_val.refs["val"] == ["val/dog/v.png"] and len(with_val.refs["train"]) == 12


def test_layout_errors_name_the_folder(tmp_path):
    root = tmp_path / "flat"
    save(Image.new("RGB", (4, 4)), root / "loose.jpg")
    with pytest.raises(DatasetError, match=re.escape(f"no class folders under '{root}'")):
        prepare_dataset(config(root), tmp_path / "data")
    save(Image.new("RGB", (4, 4)), root / "cat" / "0.jpg")
    (root / "dog").mkdir()
    with pytest.raises(
        DatasetError, match=re.escape(f"class folder '{root / 'dog'}' holds no images") + ".*remove it or add images"
    ):
        prepare_dataset(config(root), tmp_path / "data")
    split = tmp_path / "split"
    save(Image.new("RGB", (4, 4)), split / "train" / "cat" / "0.jpg")
    with pytest.raises(DatasetError, match=re.escape(f"split folder '{split / 'test'}' not found")):
        prepare_dataset(config(split), tmp_path / "data")


def test_image_broken_after_prepare_asks_for_prepare_again(folder, tmp_path):
    root, _ = folder
    index = prepare_dataset(config(root), tmp_path / "data")
    ref = index.refs["test"][0]
    (root / ref).write_bytes(b"no longer an image")
    with pytest.raises(
        DatasetError, match=re.escape(f"image '{root / ref}' cannot be read any more") + ".*rerun the prepare_data step"
    ):
        open_split(tmp_path / "data" / "index.json", "test").load(0)


def test_exif_orientation_is_applied(tmp_path):
    from convscope.data.imagefolder import FileSource

    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 20, 20))  # red on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display", as a phone held upright writes it
    (tmp_path / "a").mkdir()
    stored.save(tmp_path / "a" / "phone.jpg", exif=exif.tobytes(), quality=95)
    image = FileSource(tmp_path, ["a/phone.jpg"], ["a"], [0]).load(0)
    assert image.size == (20, 40)
    assert image.getpixel((10, 5))[0] > 200 and image.getpixel((10, 35))[2] > 200  # red on top after rotation
