"""Feature maps: for a few test images, the most active channels of chosen layers beside the input."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch import nn

from convscope.cam import ActivationRecorder
from convscope.data import open_split, sample_indices
from convscope.errors import ArtifactError, ConfigError, LayerError
from convscope.evaluation import load_model
from convscope.figures.drawing import SMALL, model_label, save_figure
from convscope.io import write_npz_atomic
from convscope.models import conv_module_names, find_layers, logits_of, stages
from convscope.transforms import build_transform, denormalise

DEFAULT_DEPTH = 4  # default layers: this many of the deepest stage boundaries


def conv_stages(model: nn.Module) -> list[str]:
    """The stages (see ``figures.stages``) that contain a Conv2d, in forward order."""
    return [name for name, module in stages(model).items() if any(isinstance(m, nn.Conv2d) for m in module.modules())]


def stage_boundaries(names: list[str], outputs: dict[str, torch.Tensor]) -> list[str]:
    """The stages whose next conv stage has a smaller spatial output, plus the last one: the end of each resolution."""
    ends = [name for name, after in zip(names, names[1:]) if outputs[after].shape[-1] < outputs[name].shape[-1]]
    return ends + names[-1:]


def _figure(label: str, image: torch.Tensor, title: str, rows: dict[str, tuple[torch.Tensor, ...]]) -> plt.Figure:
    """One image: the input, then per layer (rows) its channels' maps, given as (channels, means, maps)."""
    columns = max(len(channels) for channels, _, _ in rows.values())
    fig = plt.figure(figsize=(1.3 * (columns + 2) + 1.2, 1.65 * len(rows) + 0.9), layout="constrained")
    grid = fig.add_gridspec(len(rows), columns + 1, width_ratios=[2] + [1] * columns)  # the input twice as wide
    shown = fig.add_subplot(grid[:, 0])
    shown.imshow(image.permute(1, 2, 0).numpy())
    shown.set_title("input", fontsize=SMALL)
    shown.set_axis_off()
    for r, (layer, (channels, means, maps)) in enumerate(rows.items()):
        low, high = maps.min().item(), maps.max().item()  # one scale per row, so its colour bar reads every panel
        axes = []
        for c, (channel, mean, fmap) in enumerate(zip(channels.tolist(), means.tolist(), maps)):
            ax = fig.add_subplot(grid[r, c + 1])
            mapped = ax.imshow(fmap.numpy(), cmap="viridis", vmin=low, vmax=high, interpolation="nearest")
            ax.set_title(f"{layer}\nch {channel}\nmean {mean:.3g}", fontsize=SMALL)
            ax.set_xticks([])
            ax.set_yticks([])
            axes.append(ax)
        bar = fig.colorbar(mapped, ax=axes, shrink=0.9, pad=0.01, aspect=12)
        bar.ax.tick_params(labelsize=SMALL)
        bar.set_label("activation", fontsize=SMALL)
    fig.suptitle(f"{label}: {title}")
    return fig


def render_feature_maps(
    checkpoint_path: str | Path,
    index_path: str | Path,
    out_dir: str | Path,
    layers: list[str] | None = None,
    num_images: int = 4,
    top_k: int = 8,
) -> list[Path]:
    """Writes, per sample test image, the input beside the ``top_k`` channels with the largest mean activation
    of each layer (rows), and all the numbers to ``feature_maps.npz``.

    Args:
        checkpoint_path: a convscope checkpoint.
        index_path: the dataset index (``index.json``) the model was trained on.
        out_dir: folder for the files (created).
        layers: module names (any module that contains a Conv2d); None takes the last stage at each spatial
            resolution, the deepest four (ResNet layer1..layer4).
        num_images: test images, spread over classes (the first of class 0, 1, 2, …).
        top_k: channels shown per layer.

    Returns:
        ``feature_maps_<i>.png`` for i = 0..num_images-1, then ``feature_maps.npz``.

    Raises:
        ValueError: a bad count or an unknown layer (the message lists the valid names).
    """
    if not isinstance(num_images, int) or num_images < 1:
        raise ConfigError(f"num_images = {num_images!r}; must be an integer >= 1")
    if not isinstance(top_k, int) or top_k < 1:
        raise ConfigError(f"top_k = {top_k!r}; must be an integer >= 1")
    checkpoint, config, model = load_model(checkpoint_path)
    if layers is not None:
        layers = find_layers(model, layers, conv_module_names(model))
    source = open_split(index_path, "test", build_transform(config, train=False))
    if source.classes != checkpoint["classes"]:
        raise ArtifactError(
            f"dataset {str(index_path)!r} has other classes than checkpoint "
            f"{str(checkpoint_path)!r}; use the dataset the model was trained "
            "on"
        )
    if num_images > len(source):
        raise ConfigError(f"num_images = {num_images} but the test split has {len(source)} images; lower num_images")
    out_dir = Path(out_dir)

    picked = sample_indices(source.labels, num_images)
    inputs = torch.stack([source[i][0] for i in picked])
    labels = torch.tensor([source.labels[i] for i in picked])
    hooked = layers or conv_stages(model)
    with torch.no_grad(), ActivationRecorder(model, hooked) as recorder:
        output = model(inputs)
    logits = logits_of(output)
    probabilities = logits.softmax(dim=1)
    predicted = probabilities.argmax(dim=1)
    idle = [name for name in hooked if name not in recorder.outputs]
    if layers and idle:
        raise LayerError(
            f"layer {idle[0]!r} does not run when the model evaluates (InceptionV3's "
            "AuxLogits runs only in training); choose another layer"
        )
    # By default, stages that do not run in eval mode (InceptionV3's AuxLogits) have no map to show.
    layers = (
        layers or stage_boundaries([name for name in hooked if name not in idle], recorder.outputs)[-DEFAULT_DEPTH:]
    )

    tops = {}  # layer → top-k channel indices, their mean activations and their maps, each N×k(×h×w)
    arrays: dict[str, object] = {
        "indices": picked,
        "labels": labels,
        "predictions": predicted,
        "images": denormalise(inputs, config),
        "layers": layers,
    }
    for layer in layers:
        activation = recorder.outputs[layer].float()
        means = activation.mean(dim=(2, 3))
        top = means.topk(min(top_k, means.shape[1]), dim=1)
        maps = torch.stack([activation[n, top.indices[n]] for n in range(len(picked))])
        tops[layer] = (top.indices, top.values, maps)
        arrays.update(
            {
                f"{layer}/channel_means": means,
                f"{layer}/top_channels": top.indices,
                f"{layer}/top_means": top.values,
                f"{layer}/top_maps": maps,
            }
        )

    label, files = model_label(config), []
    for n, position in enumerate(picked):
        rows = {layer: (channels[n], means[n], maps[n]) for layer, (channels, means, maps) in tops.items()}
        title = (
            f"test image {position}, true {source.classes[labels[n]]}, predicted {source.classes[predicted[n]]} "
            f"({probabilities[n, predicted[n]]:.0%})"
        )
        files.append(save_figure(_figure(label, arrays["images"][n], title, rows), out_dir / f"feature_maps_{n}.png"))
    files.append(write_npz_atomic(out_dir / "feature_maps.npz", **arrays))
    return files


def render(inputs: Mapping[str, str], out_dir: Path, settings: dict) -> list[Path]:
    """The family's entry point (see ``convscope.figures``)."""
    return render_feature_maps(inputs["checkpoint"], inputs["index"], out_dir, **settings)
