"""A local folder of images, one sub-folder per class (Caltech-256 layout), optionally split.

``root`` holds either class folders (``001.ak47/001_0001.jpg``) or ``train/`` and ``test/``
(and optionally ``val/``) split folders that each hold class folders. Every image is
decoded once at prepare time, so unreadable files are found before training starts.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from convscope.config import DatasetConfig
from convscope.data import SPLITS, DatasetError, DatasetIndex, ImageSource, stratified_split

EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
# How many unreadable paths a message names before it only counts the rest.
LISTED = 10


def display_name(folder: str) -> str:
    """``001.ak47`` → ``ak47``: drops a leading numeric prefix and dot, keeps the rest verbatim."""
    return re.sub(r"^\d+\.", "", folder) or folder


def to_rgb(image: Image.Image) -> Image.Image:
    """Converts any PIL mode to a new RGB image; transparent areas become white, 16-bit data is scaled."""
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    if image.mode.startswith("I") or image.mode == "F":
        # Pillow clips 16-bit and float values at 255 instead of scaling them.
        values = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or values.max(initial=0) > 255:
            values = values / 257
        return Image.fromarray(values.clip(0, 255).round().astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _class_folders(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and _visible(p)), key=lambda p: p.name)


def _images(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and _visible(p) and p.suffix.lower() in EXTENSIONS)
    if not files:
        raise DatasetError(
            f"class folder {str(folder)!r} holds no images ({', '.join(sorted(EXTENSIONS))}); remove it or add images"
        )
    return files


def _layout(root: Path) -> dict[str, Path]:
    """The split folders under ``root`` ({} when it holds class folders directly)."""
    folders = _class_folders(root)
    if not folders:
        raise DatasetError(
            f"no class folders under {str(root)!r}; put one folder of images "
            "per class there (e.g. 001.ak47/), or train/ and test/ split "
            "folders of class folders"
        )
    splits = {p.name: p for p in folders if p.name in SPLITS}
    if not splits:
        return {}
    others = [p.name for p in folders if p.name not in SPLITS]
    if others:
        raise DatasetError(
            f"{str(root)!r} mixes split folders ({', '.join(splits)}) with "
            f"other folders ({', '.join(others)}); keep only train/ val/ test/ "
            "or only class folders"
        )
    for needed in ("train", "test"):
        if needed not in splits:
            raise DatasetError(
                f"split folder {str(root / needed)!r} not found; with split folders, "
                "root needs train/ and test/ (val/ is optional)"
            )
    return splits


def _check_readable(root: Path, files: list[Path], on_corrupt: str) -> set[Path]:
    """Decodes every file once; returns the unreadable ones (raising when on_corrupt is fail)."""
    bad = []
    for path in tqdm(files, desc="indexing images", unit="img"):
        try:
            with Image.open(path) as image:
                to_rgb(image)
        except Exception:  # decoders fail in many ways; every one means the file is unusable
            bad.append(path)
    if not bad:
        return set()
    names = [p.relative_to(root).as_posix() for p in bad]
    listed = ", ".join(names[:LISTED]) + (f", ... ({len(names) - LISTED} more)" if len(names) > LISTED else "")
    if on_corrupt == "fail":
        raise DatasetError(
            f"{len(bad)} unreadable image(s) under {str(root)!r}: {listed}; delete them or set dataset.on_corrupt: skip"
        )
    print(f"skipped {len(bad)} unreadable image(s): {listed}", file=sys.stderr)
    return set(bad)


def prepare(config: DatasetConfig, out_dir: Path) -> DatasetIndex:
    """Indexes the images under ``config.root`` and splits them (stratified, deterministic)."""
    root = Path(config.root).resolve()
    splits = _layout(root)
    class_folders = _class_folders(splits.get("train", root))
    folder_names = [p.name for p in class_folders]
    label_of = {name: label for label, name in enumerate(folder_names)}
    # Each split's files as (path, label), in class then file-name order.
    found: dict[str, list[tuple[Path, int]]] = {}
    for split, split_root in (splits or {"all": root}).items():
        folders = _class_folders(split_root)
        if not folders:
            raise DatasetError(
                f"split folder {str(split_root)!r} holds no class folders; put one folder of images per class there"
            )
        found[split] = []
        for folder in folders:
            if folder.name not in label_of:
                raise DatasetError(
                    f"class folder {str(folder)!r} has no counterpart in {str(splits['train'])!r}; "
                    "add it to train/ or remove it"
                )
            found[split] += [(path, label_of[folder.name]) for path in _images(folder)]

    bad = _check_readable(root, [path for items in found.values() for path, _ in items], config.on_corrupt)
    found = {split: [(p, label) for p, label in items if p not in bad] for split, items in found.items()}
    kept_labels = {label for items in found.values() for _, label in items}
    for label, folder in enumerate(class_folders):
        if label not in kept_labels:
            raise DatasetError(f"class folder {str(folder)!r} holds no readable images; remove it or add images")

    def take(items: list[tuple[Path, int]], positions: list[int]) -> list[tuple[Path, int]]:
        return [items[i] for i in positions]

    val_seed = config.split_seed
    if not splits:
        items = found.pop("all")
        rest, test = stratified_split([label for _, label in items], config.test_fraction, config.split_seed)
        found["test"], found["train"] = take(items, test), take(items, rest)
        val_seed += 1  # a draw independent of the test hold-out
    if "val" not in found:
        train = found["train"]
        kept, held = stratified_split([label for _, label in train], config.val_fraction, val_seed)
        found["train"], found["val"] = take(train, kept), take(train, held)

    # Display names must stay unique: a clash keeps the folder names as they are.
    names = [display_name(n) for n in folder_names]
    classes = names if len(set(names)) == len(names) else folder_names
    return DatasetIndex(
        kind="imagefolder",
        root=str(root),
        classes=classes,
        refs={split: [p.relative_to(root).as_posix() for p, _ in found[split]] for split in SPLITS},
        labels={split: [label for _, label in found[split]] for split in SPLITS},
        skipped=sorted(p.relative_to(root).as_posix() for p in bad),
    )


class FileSource(ImageSource):
    """Images read from files under ``root`` on demand.

    Args:
        root: folder the refs are relative to.
        refs: POSIX paths of the images, relative to ``root``.
    """

    def __init__(
        self, root: str | Path, refs: list[str], classes: list[str], labels: list[int], transform=None
    ) -> None:
        super().__init__(classes, labels, transform)
        self.root = Path(root)
        self.refs = list(refs)

    def load(self, i: int) -> Image.Image:
        path = self.root / self.refs[i]
        try:
            with Image.open(path) as image:
                # Phones store the camera's orientation as an EXIF tag; PIL does not apply it.
                return to_rgb(ImageOps.exif_transpose(image))
        except Exception as error:  # whatever broke, the file is no longer what was indexed
            raise DatasetError(
                f"image {str(path)!r} cannot be read any more ({type(error).__name__}); "
                "restore it or rerun the prepare_data step"
            ) from None


def open_split(index: DatasetIndex, data_dir: Path, split: str, transform=None) -> FileSource:
    """Opens one split of an indexed image folder."""
    return FileSource(index.root, index.refs[split], index.classes, index.labels[split], transform)
