"""What the figure families draw with: the atomic PNG writer, image grids, heatmap panels, colour bars.

Arrays, text and JSON go through :mod:`convscope.io`'s atomic writers.

Every family imports these instead of another family's module, so a heatmap looks the same in every figure.
Torch is imported only by the functions that take tensors, so a family that reads JSON alone starts in ~1 s.
"""

from __future__ import annotations

import io
import math
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, same output on every machine

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from convscope.errors import ConfigError  # noqa: E402
from convscope.io import write_atomic  # noqa: E402
from convscope.methods import METHODS  # noqa: E402

if TYPE_CHECKING:
    import torch

    from convscope.config import ModelConfig

DPI = 150
SMALL = 8  # pt: the smallest font any figure uses (panel titles, annotations, dense tick labels)
CAM_LABEL = "Grad-CAM, normalised per map"
PANEL_INCHES = 1.55


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    """Writes ``fig`` as a PNG at 150 dpi (atomically) and closes it; constrained layout keeps everything inside,
    and titles wider than the figure are wrapped (:func:`wrap_wide_titles`)."""
    try:
        return write_atomic(path, lambda f: f.write(_png_with_titles_inside(fig)))
    finally:
        plt.close(fig)


_WRAP_ROUNDS = 3  # wrapping moves the axes, and so the titles centred on them: check again after each draw


def _png_with_titles_inside(fig: Figure) -> bytes:
    # The PNG's own draw lays the figure out; only a figure with a title found too wide is drawn again.
    png = _png(fig)
    for _ in range(_WRAP_ROUNDS):
        if not wrap_wide_titles(fig):
            break
        png = _png(fig)
    return png


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def wrap_wide_titles(fig: Figure) -> bool:
    """Wraps, as laid out by the figure's last draw, its title and every axes title that reaches past the
    figure's left or right edge; returns whether it wrapped any.

    Titles hold model, method and layer names of any length, and constrained layout makes room for a title's
    height but not its width; wrapping here, where every family saves, keeps them all inside.
    """
    too_wide = [text for text in _titles(fig) if _sticks_out(text, fig)]
    for text in too_wide:
        lines = text.get_text().split("\n")
        # The widest wrapping that fits, at spaces only: mobilenet_v3_small and Grad-CAM stay whole.
        wrapper = textwrap.TextWrapper(break_long_words=False, break_on_hyphens=False)
        for width in range(max(map(len, lines)) - 1, 0, -1):
            wrapper.width = width
            text.set_text("\n".join(map(wrapper.fill, lines)))
            if not _sticks_out(text, fig):
                break
    return bool(too_wide)


def _titles(fig: Figure) -> list[Text]:
    """The figure's title and its axes' titles (the texts placed on the figure itself hold the suptitle)."""
    return [text for text in fig.texts if not text.get_wrap()] + [ax.title for ax in fig.axes]


def _sticks_out(text: Text, fig: Figure) -> bool:
    if not text.get_visible() or not text.get_text():
        return False
    # Measured as the last draw, the PNG's at DPI, laid the text out.
    extent = text.get_window_extent(dpi=DPI)
    return extent.x0 < 0 or extent.x1 > fig.get_figwidth() * DPI


def model_label(config: ModelConfig) -> str:
    """How titles name a model: its configured name, with the architecture when that differs."""
    return name_label(config.name, config.arch)


def name_label(name: str, arch: str) -> str:
    """:func:`model_label` from the name and the architecture alone (as ``metrics.json`` gives them)."""
    return name if name == arch else f"{name} ({arch})"


def pair(value: int | tuple[int, ...]) -> str:
    """A kernel or stride as ``7×7`` (ints are square)."""
    values = (value, value) if isinstance(value, int) else tuple(value)
    return "×".join(map(str, values))


def tile(images: torch.Tensor, pad_value: float) -> np.ndarray:
    """N×C×h×w images tiled into one near-square H×W×C array (C is 1 or 3), ``pad_value`` between tiles."""
    count, _, height, width = images.shape
    # Tiles per row so the grid comes out about square, also for 1×7 or 3×1 kernels.
    nrow = min(count, math.ceil(math.sqrt(count * (height + 1) / (width + 1))))
    import torchvision  # here, not at the top: the families that draw no tensors do not import torch (~3 s)

    grid = torchvision.utils.make_grid(images, nrow=nrow, padding=1, pad_value=pad_value)
    # make_grid copies a single channel to three; keep one so colour maps apply.
    return grid[: images.shape[1]].permute(1, 2, 0).numpy()


def draw_cam(ax: Axes, image: np.ndarray, cam: np.ndarray, flagged: bool, cmap: str, alpha: float) -> None:
    """The heatmap over the image; a grey "blank map" panel where the engine flagged the map."""
    if flagged:
        ax.imshow(np.full(cam.shape, 0.75), cmap="gray", vmin=0, vmax=1)
        ax.text(0.5, 0.5, "blank map", transform=ax.transAxes, ha="center", va="center", fontsize=SMALL, color="0.2")
    else:
        ax.imshow(image)
        ax.imshow(cam, cmap=cmap, vmin=0, vmax=1, alpha=alpha)
    clear_axes(ax)


def prob(value: float) -> str:
    """A probability for a title: two decimals, or one significant digit below 0.01 (not a bare 0.00)."""
    value = float(value)
    return f"p={value:.2f}" if value >= 0.01 else f"p={value:.1g}"


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def clear_axes(ax: Axes) -> None:
    """No ticks or frame, but the y label stays (``axis("off")`` would hide the row labels)."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def title_cam_grid(fig: Figure, axes: np.ndarray, titles: list[str], cmap: str, fontsize: float = 9) -> None:
    """Heads a grid whose first column shows the inputs and the others heatmaps: "input", then ``titles``, and
    one colour bar for the heatmaps."""
    axes[0, 0].set_title("input", fontsize=fontsize)
    for col, title in enumerate(titles, start=1):
        axes[0, col].set_title(title, fontsize=fontsize)
    cam_colorbar(fig, axes[:, 1:], cmap)


def cam_colorbar(fig: Figure, axes: np.ndarray, cmap: str) -> None:
    """One colour bar for every heatmap of the figure (all maps share the [0, 1] scale)."""
    bar = fig.colorbar(
        ScalarMappable(Normalize(0, 1), cmap),
        ax=list(np.ravel(axes)),
        shrink=min(0.6, 3 / axes.shape[0]),
        aspect=25,
        pad=0.02,
    )
    # A one-row figure's bar is shorter than the label: two lines keep it inside the figure.
    bar.set_label(CAM_LABEL if axes.shape[0] > 1 else CAM_LABEL.replace(", ", ",\n"), fontsize=SMALL)
    bar.ax.tick_params(labelsize=SMALL)


def grid(
    rows: int, cols: int, title: str, label_inches: float = 0.0, title_lines: int = 0
) -> tuple[Figure, np.ndarray]:
    """A figure of rows×cols image panels (2-D axes array) with a title, room for a colour bar, row labels
    (``label_inches`` wide) and ``title_lines`` lines of panel title above every row."""
    # "compressed" is constrained layout that also closes the gaps square images leave between columns; it
    # shrinks the panels when the titles do not fit, and cuts the last row when they still do not, so the
    # height must budget for them.
    height = rows * (PANEL_INCHES + 0.17 * title_lines) + 0.7
    fig = Figure(figsize=(PANEL_INCHES * cols + 1.0 + label_inches, height), layout="compressed")
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
    fig.suptitle(title, fontsize=10)
    return fig, axes


def check_heatmap_options(method: str, cmap: str, alpha: float) -> None:
    """Raises ConfigError for an unknown CAM method or colour map, or an alpha outside [0, 1]."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    check_cmap(cmap)
    if not 0 <= alpha <= 1:
        raise ConfigError(f"alpha must lie in [0, 1], got {alpha}")


def check_cmap(cmap: str) -> None:
    """Raises ConfigError for a name that is not a matplotlib colour map."""
    if cmap not in matplotlib.colormaps:
        raise ConfigError(
            f"unknown colour map {cmap!r}; use a matplotlib colour map such as 'jet', 'inferno' or 'RdBu_r'"
        )
