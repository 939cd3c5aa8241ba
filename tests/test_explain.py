"""Explanation quality: each metric on cases with known answers, the sanity check on a trained model, and the
explanations figure family end to end.

Parity of Grad-CAM++ and LayerCAM with pytorch-grad-cam is proven in test_cam.py
(test_resnet18_equals_pytorch_grad_cam)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import scipy.stats
import torch
from conftest import tiny_config
from torch import nn

from convscope import explain, runtime
from convscope.config import RuntimeConfig
from convscope.contracts import LOCALISATION_GROUPS as GROUPS
from convscope.data import ArraySource
from convscope.errors import UserError
from convscope.evaluation import open_model_and_split
from convscope.explain import (
    ROAD_FRACTIONS,
    SANITY_THRESHOLD,
    cascading_randomisation,
    centre_maps,
    deletion_insertion,
    dilate,
    energy_pointing_game,
    pixel_ranks,
    pointing_game,
    random_maps,
    spearman,
    ssim,
    step_counts,
    tolerance_pixels,
    undefined_maps,
)
from convscope.explanations import scoring_model, write_explanations
from convscope.figures.explanations import render_explanations
from convscope.models import model_from_checkpoint
from convscope.training import load_checkpoint, train_model

pytestmark = pytest.mark.usefixtures("one_thread")

FIGURES = ["deletion_insertion.png", "localisation.png", "sanity_curves.png", "sanity_maps.png"]
SUMMARY_KEYS = {"pointing_game", "energy", "n", "flagged"}


@pytest.fixture(scope="module")
def trained(tiny_index, tmp_path_factory) -> dict:
    """resnet18 at 32 px trained for 2 epochs on the tiny shapes set (layer4 is 1×1 there, so tests use layer3)."""
    path = tmp_path_factory.mktemp("trained") / "checkpoint.pt"
    train_model(tiny_config(), tiny_index, path, RuntimeConfig.defaults(device="cpu"), threads=1)
    return {"checkpoint": path, "model": model_from_checkpoint(load_checkpoint(path))}


def square_mask(n: int = 1, size: int = 32, top: int = 8, side: int = 8) -> torch.Tensor:
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    masks[:, top : top + side, top : top + side] = True
    return masks


# --- localisation ----------------------------------------------------------------------------------------------


def test_map_equal_to_the_mask_scores_one_and_far_peaks_zero():
    masks = square_mask(2)
    assert pointing_game(masks.float(), masks).tolist() == [1.0, 1.0]
    assert energy_pointing_game(masks.float(), masks).tolist() == [1.0, 1.0]
    far = torch.zeros(1, 32, 32)
    far[0, 30, 30] = 1.0
    assert pointing_game(far, masks[:1]).item() == 0.0 and energy_pointing_game(far, masks[:1]).item() == 0.0
    # Half the mass inside: a map of 1 on the object and 1 on an equal area outside.
    half = masks[:1].float()
    half[0, 20:28, 20:28] = 1.0
    assert energy_pointing_game(half, masks[:1]).item() == pytest.approx(0.5)


def test_tolerance_scales_with_the_input_and_is_a_disc():
    assert tolerance_pixels(224) == 15.0 and tolerance_pixels(72) == pytest.approx(15 * 72 / 224)
    mask = square_mask(top=8, side=8)[:1]  # rows and columns 8..15
    near = torch.zeros(1, 32, 32)
    near[0, 8, 19] = 1.0  # 4 px right of the object
    assert pointing_game(near, mask, tolerance=4).item() == 1.0
    assert pointing_game(near, mask, tolerance=3.9).item() == 0.0
    assert pointing_game(near, mask, tolerance=0).item() == 0.0
    assert pointing_game(near, mask).item() == 0.0  # the default at 32 px is 15 * 32 / 224 ≈ 2.1 px
    near[0, 8, 19], near[0, 8, 17] = 0.0, 1.0  # 2 px away
    assert pointing_game(near, mask).item() == 1.0
    # The dilation is the Euclidean disc: equal to a brute-force distance to the nearest object pixel.
    generator = torch.Generator().manual_seed(0)
    masks = torch.rand(3, 20, 20, generator=generator) > 0.97
    masks[0] = False
    ys, xs = np.mgrid[0:20, 0:20]
    for radius in (0.0, 1.5, 3.0, 4.2, 4.82, 5.0, 30.0):  # 30: the disc outgrows the image
        grown = dilate(masks, radius).numpy()
        for mask, got in zip(masks.numpy(), grown):
            points = np.argwhere(mask)
            distance = (
                np.sqrt(((np.stack([ys, xs], -1)[:, :, None] - points[None, None]) ** 2).sum(-1)).min(-1)
                if len(points)
                else np.full((20, 20), np.inf)
            )
            np.testing.assert_array_equal(got, distance <= radius)


def test_undefined_maps_are_flagged_and_left_out():
    masks = square_mask(5)
    maps = torch.rand(5, 32, 32, generator=torch.Generator().manual_seed(1))
    maps[1] = 0.0  # blank, as the engine leaves a flagged map
    maps[2] = 0.3  # constant but not zero: still no maximum
    maps[3, 4, 4] = torch.nan
    flags = torch.tensor([False, False, False, False, True])  # the engine flagged the last one
    assert undefined_maps(maps, flags).tolist() == [False, True, True, True, True]
    assert pointing_game(maps, masks, flags=flags).isnan().tolist() == [False, True, True, True, True]
    assert energy_pointing_game(maps, masks, flags=flags).isnan().tolist() == [False, True, True, True, True]
    assert energy_pointing_game(maps[:1], masks[:1]).item() == pytest.approx((maps[0] * masks[0]).sum() / maps[0].sum())


def test_tied_maxima_score_the_share_that_hits():
    mask = square_mask()[:1]
    maps = torch.zeros(1, 32, 32)
    maps[0, 10, 10] = maps[0, 30, 30] = maps[0, 12, 12] = maps[0, 0, 30] = 1.0  # two of four maxima on the object
    assert pointing_game(maps, mask, tolerance=0).item() == 0.5


def test_baselines():
    masks = torch.zeros(2, 40, 40, dtype=torch.bool)
    masks[0, 15:25, 15:25] = True  # covers the centre
    masks[1, 0:10, 0:10] = True  # a corner
    centre = centre_maps(2, 40, 40)
    assert centre.shape == (2, 40, 40) and centre.max() == pytest.approx(1.0, abs=0.01)
    assert pointing_game(centre, masks).tolist() == [1.0, 0.0]
    y = np.arange(40) - 19.5
    gaussian = np.exp(-(y[:, None] ** 2 + y[None] ** 2) / (2 * 10.0**2))  # sigma: a quarter of the side
    expected = [(gaussian * m).sum() / gaussian.sum() for m in masks.numpy()]
    np.testing.assert_allclose(energy_pointing_game(centre, masks).numpy(), expected, rtol=1e-5)
    area = masks[0].float().mean().item()
    assert expected[0] > 2.5 * area and expected[1] < area / 3  # centred objects favour it, corner objects do not
    noise = random_maps(400, 40, 40, seed=3)
    assert torch.equal(noise, random_maps(400, 40, 40, seed=3)) and not torch.equal(
        noise, random_maps(400, 40, 40, seed=4)
    )
    assert 0 <= noise.min() and noise.max() < 1
    # Noise spreads its mass evenly: its energy share is the mask's share of the image.
    area = masks.float().mean((1, 2)).repeat(200)
    torch.testing.assert_close(
        energy_pointing_game(noise, masks.repeat(200, 1, 1)).mean(), area.mean(), atol=0.01, rtol=0
    )


# --- faithfulness ----------------------------------------------------------------------------------------------


class RegionNet(nn.Module):
    """Class 0's logit is 10 × (correlation of channel 0 with a checkerboard inside one region − 0.5): the image
    below scores 1 there, deleting or blurring the region scores ~0, the rest of the image does not count."""

    def __init__(self, region: torch.Tensor) -> None:
        super().__init__()
        checker = (torch.arange(32)[:, None] + torch.arange(32)[None]) % 2 * 2.0 - 1
        self.register_buffer("weight", checker * region / region.sum())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = (x[:, 0] * self.weight).sum((1, 2))
        return torch.stack([10 * (score - 0.5), torch.zeros_like(score)], 1)


def test_deletion_and_insertion_rank_the_used_pixels_first():
    region = torch.zeros(32, 32)
    region[4:12, 20:28] = 1.0
    model = RegionNet(region).train()
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    x[:, 0] = torch.where(region.bool(), model.weight.sign(), x[:, 0])
    truth = region.expand(3, 32, 32).clone()  # flat on the region: the ties are broken by rank
    maps = {"truth": truth, "random": random_maps(3, 32, 32, seed=0), "reversed": 1 - truth}
    curves = {name: deletion_insertion(model, x, m, [0, 0, 0], steps=16, batch_size=7) for name, m in maps.items()}
    assert model.training  # the mode is given back

    good = curves["truth"]
    assert good.fractions.tolist() == [k / 16 for k in range(17)]
    assert good.deletion[:, 0].min() > 0.99 and good.deletion[:, 1].max() < 0.01  # step 1 deletes exactly the region
    assert good.insertion[:, 0].max() < 0.01 and good.insertion[:, 1].min() > 0.99  # blurred checkerboard: ~0
    deletion = {name: c.deletion_auc.mean().item() for name, c in curves.items()}
    insertion = {name: c.insertion_auc.mean().item() for name, c in curves.items()}
    assert deletion["truth"] < 0.1 < deletion["random"] < deletion["reversed"]
    assert insertion["truth"] > 0.9 > insertion["random"] > insertion["reversed"]
    torch.testing.assert_close(
        good.deletion_auc, torch.from_numpy(np.trapezoid(good.deletion.numpy(), good.fractions.numpy())).float()
    )
    # Chunking changes nothing.
    torch.testing.assert_close(
        deletion_insertion(model, x, maps["random"], [0, 0, 0], steps=16, batch_size=1000).deletion,
        curves["random"].deletion,
    )


class CountNet(nn.Module):
    """Softmax probability of class 0 = share of pixels whose channel 0 is not zero."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept = (x[:, 0] != 0).float().mean((1, 2))
        return torch.stack([kept.clamp(min=1e-12).log(), (1 - kept).clamp(min=1e-12).log()], 1)


def test_ties_are_broken_by_rank_so_every_step_deletes_the_same_count():
    x = torch.ones(2, 3, 16, 16)
    flat = torch.zeros(2, 16, 16)
    plateaus = torch.zeros(2, 16, 16)
    plateaus[:, :, 8:] = 1.0  # two flat halves
    for maps in (flat, plateaus):
        curves = deletion_insertion(CountNet(), x, maps, [0, 0], steps=8)
        torch.testing.assert_close(curves.deletion, (1 - curves.fractions).expand(2, -1), atol=1e-6, rtol=0)
    ranks = pixel_ranks(plateaus)
    assert sorted(ranks[0].flatten().tolist()) == list(range(256))
    assert (ranks[0][:, 8:] < 128).all()  # the higher half first, in raster order within it
    assert pixel_ranks(flat)[0].flatten().tolist() == list(range(256))
    counts = step_counts(100, 7)
    assert counts[0] == 0 and counts[-1] == 100 and set(counts.diff().tolist()) <= {14, 15}


# --- sanity: correlation and similarity ------------------------------------------------------------------------


def ssim_by_hand(a: np.ndarray, b: np.ndarray, window: int, sigma: float) -> float:
    g = np.exp(-((np.arange(window) - (window - 1) / 2) ** 2) / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    values = []
    for i in range(a.shape[0] - window + 1):
        for j in range(a.shape[1] - window + 1):
            pa, pb = a[i : i + window, j : j + window], b[i : i + window, j : j + window]
            ma, mb = (w * pa).sum(), (w * pb).sum()
            va, vb, cov = (w * (pa - ma) ** 2).sum(), (w * (pb - mb) ** 2).sum(), (w * (pa - ma) * (pb - mb)).sum()
            values.append((2 * ma * mb + 1e-4) * (2 * cov + 9e-4) / ((ma**2 + mb**2 + 1e-4) * (va + vb + 9e-4)))
    return float(np.mean(values))


def test_spearman_and_ssim_agree_with_independent_computations():
    generator = torch.Generator().manual_seed(2)
    a = (torch.rand(4, 9, 9, generator=generator) * 5).floor() / 5  # many ties, as ReLU'd maps have
    b = torch.rand(4, 9, 9, generator=generator)
    b[1] = a[1] ** 2 + 0.01 * b[1]
    expected = [scipy.stats.spearmanr(a[i].flatten(), b[i].flatten()).statistic for i in range(4)]
    np.testing.assert_allclose(spearman(a, b).numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(
        explain.average_ranks(a.flatten(1)).numpy(), scipy.stats.rankdata(a.flatten(1).numpy(), axis=1)
    )
    assert spearman(a, a).tolist() == pytest.approx([1.0] * 4)
    assert spearman(torch.zeros(1, 9, 9), b[:1]).isnan().all()

    expected = [ssim_by_hand(a[i].double().numpy(), b[i].double().numpy(), 5, 1.5) for i in range(4)]
    np.testing.assert_allclose(ssim(a, b, window=5).numpy(), expected, atol=1e-6)
    assert ssim(b, b).tolist() == pytest.approx([1.0] * 4)  # the window shrinks to fit 9 px
    assert (ssim(a, 1 - a) < 0).all()


class Gain(nn.Module):
    """Scales its input per class; without ``reset_parameters``, so randomising it shuffles the two gains."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([2.0, 1.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class Blind(nn.Module):
    """Its Grad-CAM at ``features`` is the first input channel whatever the gains, as long as they stay positive."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Identity()
        self.head = Gain()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)[:, :1].mean((2, 3)))


def test_sanity_fails_maps_that_ignore_the_weights():
    x = torch.rand(3, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    model = Blind()
    result = cascading_randomisation(model, x, "features", method="gradcam++")
    assert result.steps == ["head"] and result.targets.tolist() == [0, 0, 0]
    assert result.mean_spearman.tolist() == pytest.approx([1.0]) and result.mean_ssim.tolist() == pytest.approx([1.0])
    assert result.passes is False
    assert model.head.weight.tolist() == [2.0, 1.0]
    with pytest.raises(UserError, match="no stage with parameters"):
        cascading_randomisation(nn.Sequential(nn.Identity(), nn.Flatten()), x, "0")


def test_cascading_randomisation_destroys_the_maps_of_a_trained_model(trained, tiny_index):
    model = trained["model"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _, _, source = open_model_and_split(trained["checkpoint"], tiny_index, "test")
    x = torch.stack([source[i][0] for i in range(0, 40, 5)])
    rng = torch.get_rng_state()
    result = cascading_randomisation(model, x, "layer3", method="gradcam", seed=0)
    assert result.steps == ["fc", "layer4", "layer3", "layer2", "layer1", "bn1", "conv1"]
    assert result.maps.shape == (7, 8, 32, 32) and result.spearman.shape == result.ssim.shape == (7, 8)
    assert torch.equal(torch.get_rng_state(), rng)  # seeded in a fork: the caller's stream is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # a deep copy was randomised
    rho = result.mean_spearman
    assert rho[-1] < SANITY_THRESHOLD and result.passes is True
    assert result.mean_ssim[-1] < 0.5
    again = cascading_randomisation(model, x, "layer3", method="gradcam", seed=0)
    torch.testing.assert_close(again.spearman, result.spearman, equal_nan=True, atol=0, rtol=0)


# --- the figure family -----------------------------------------------------------------------------------------


@pytest.mark.skipif(not runtime.cpu_has_native_bf16(), reason="this CPU emulates bf16")
def test_perturbed_images_scored_in_bf16_give_the_fp32_scores_closely(trained, tiny_index):
    from convscope.evaluation import open_model_and_split
    from convscope.explain import road

    _, model, source = open_model_and_split(trained["checkpoint"], tiny_index, "test")
    x = torch.stack([source[i][0] for i in range(8)])
    maps = random_maps(8, 32, 32, seed=1)
    targets = model(x).argmax(1)
    scorer = scoring_model(model, "bf16")  # what the explain job scores with: BatchNorm folded, bf16 weights
    fp32 = deletion_insertion(model, x, maps, targets, steps=8)
    bf16 = deletion_insertion(scorer, x, maps, targets, steps=8, precision="bf16")
    assert not torch.equal(fp32.deletion, bf16.deletion)  # bf16 did run
    torch.testing.assert_close(bf16.deletion_auc, fp32.deletion_auc, atol=0.02, rtol=0)
    torch.testing.assert_close(bf16.insertion_auc, fp32.insertion_auc, atol=0.02, rtol=0)
    fp32, bf16 = road(model, x, maps, targets), road(scorer, x, maps, targets, precision="bf16")
    torch.testing.assert_close(bf16.morf, fp32.morf, atol=0.03, rtol=0)
    assert bf16.morf.dtype == torch.float32


def render(trained: dict, index_path, folder, cmap: str = "jet", **settings) -> tuple[list, dict]:
    """The explain job's files, and the explanation_quality figures drawn from them, all in ``folder``."""
    options = {"layers": ["layer2", "layer3"], "num_images": 5, "road_images": 3, "steps": 4} | settings
    report = folder / "explanations.json"
    paths = write_explanations(trained["checkpoint"], index_path, folder, report, **options)
    paths += render_explanations(report, folder, folder, cmap=cmap)
    return paths, json.loads(report.read_text())


def test_render_explanations_writes_the_documented_report(trained, tiny_index, tmp_path):
    paths, report = render(trained, tiny_index, tmp_path / "a")
    assert sorted(p.name for p in paths) == sorted(["explanations.json", "explanations.npz", "maps.npz", *FIGURES])
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
    assert {
        k: report[k]
        for k in (
            "schema_version",
            "model",
            "arch",
            "input_size",
            "split",
            "layers",
            "layer",
            "num_images",
            "steps",
            "seed",
        )
    } == {
        "schema_version": 1,
        "model": "tiny",
        "arch": "resnet18",
        "input_size": 32,
        "split": "test",
        "layers": ["layer2", "layer3"],
        "layer": "layer3",
        "num_images": 5,
        "steps": 4,
        "seed": 0,
    }
    assert report["precision"] == runtime.pick_precision("auto", torch.device("cpu"), trained["model"], backward=False)
    assert (
        report["tolerance_px"] == pytest.approx(15 * 32 / 224, abs=1e-4)
        and report["sanity_threshold"] == SANITY_THRESHOLD
    )
    assert list(report["methods"]) == ["gradcam", "gradcam++", "layercam"]
    with np.load(tmp_path / "a" / "explanations.npz") as npz:
        arrays = {key: npz[key] for key in npz.files}
    with np.load(tmp_path / "a" / "maps.npz") as npz:
        maps = {key: npz[key] for key in npz.files}
    assert maps["inputs"].dtype == np.float32 and maps["inputs"].shape == (5, 3, 32, 32)
    assert maps["layers"].tolist() == ["layer2", "layer3"] and maps["methods"].tolist() == list(report["methods"])
    assert maps["targets"].tolist() == arrays["sample_targets"].tolist()
    assert {k for k in maps if k.startswith("cam_")} == {
        f"cam_{m}_{layer}" for m in report["methods"] for layer in ("layer2", "layer3")
    }
    correct = arrays["test_correct"]
    assert correct.shape == (40,) and arrays["fractions"].tolist() == [0, 0.25, 0.5, 0.75, 1]
    for method, entry in report["methods"].items():
        assert (
            set(entry) == {"localisation", "localisation_skipped", "faithfulness", "road", "sanity"}
            and entry["localisation_skipped"] is None
        )
        assert list(entry["localisation"]) == ["layer2", "layer3"]
        for layer, groups in entry["localisation"].items():
            assert set(groups) == {*GROUPS, "baselines"} and set(groups["baselines"]) == {"centre", "random"}
            assert all(
                set(groups[g]) == SUMMARY_KEYS and set(groups["baselines"]["random"][g]) == SUMMARY_KEYS for g in GROUPS
            )
            assert groups["all"]["n"] + groups["all"]["flagged"] == 40
            assert groups["correct"]["n"] + groups["correct"]["flagged"] == int(correct.sum())
            # The JSON means are the npz's per-image numbers, undefined maps left out.
            pointing = arrays[f"pointing_{method}_{layer}"]
            assert groups["all"]["flagged"] == int(np.isnan(pointing).sum())
            if groups["all"]["n"]:
                assert groups["all"]["pointing_game"] == pytest.approx(np.nanmean(pointing), abs=1e-4)
                assert 0 <= groups["all"]["energy"] <= 1
        assert entry["localisation"]["layer3"]["baselines"]["centre"]["all"] == {
            "pointing_game": pytest.approx(np.mean(arrays["pointing_centre"]), abs=1e-4),
            "energy": pytest.approx(np.mean(arrays["energy_centre"]), abs=1e-4),
            "n": 40,
            "flagged": 0,
        }
        faith = entry["faithfulness"]
        assert set(faith) == {
            "deletion_auc",
            "insertion_auc",
            "random_deletion_auc",
            "random_insertion_auc",
            "n",
            "flagged",
            "steps",
        }
        defined = ~arrays[f"undefined_{method}"]
        assert faith["n"] == int(defined.sum()) and faith["steps"] == 4
        if faith["n"]:
            expected = np.trapezoid(arrays[f"deletion_{method}"][defined], arrays["fractions"]).mean()
            assert faith["deletion_auc"] == pytest.approx(expected, abs=1e-4)
        assert faith["random_insertion_auc"] == pytest.approx(
            np.trapezoid(arrays["random_insertion"], arrays["fractions"]).mean(), abs=1e-4
        )
        road = entry["road"]
        # ROAD measures the sample's first road_images images only.
        assert arrays[f"road_morf_{method}"].shape == (3, len(ROAD_FRACTIONS))
        assert road["fractions"] == pytest.approx(list(ROAD_FRACTIONS)) and road["n"] == int(defined[:3].sum())
        if road["n"]:
            assert road["morf"] == pytest.approx(arrays[f"road_morf_{method}"][defined[:3]].mean(), abs=1e-4)
            assert road["lerf"] == pytest.approx(arrays[f"road_lerf_{method}"][defined[:3]].mean(), abs=1e-4)
        assert road["random_lerf"] == pytest.approx(arrays["random_road_lerf"].mean(), abs=1e-4)
        # The sample's maps in maps.npz are the maps the metrics used.
        np.testing.assert_array_equal(maps[f"cam_{method}_layer3"], arrays[f"cam_{method}"])
        sanity = entry["sanity"]
        assert (
            sanity["steps"]
            == ["fc", "layer4", "layer3", "layer2", "layer1", "bn1", "conv1"]
            == arrays["sanity_steps"].tolist()
        )
        assert len(sanity["spearman"]) == len(sanity["ssim"]) == 7 and isinstance(sanity["passes"], bool)
        assert sanity["passes"] == (sanity["spearman"][-1] < SANITY_THRESHOLD)
        assert arrays[f"sanity_maps_{method}"].shape == (7, 2, 32, 32) and arrays[
            f"sanity_spearman_{method}"
        ].shape == (7, 5)
    # Plain numbers rounded to 4 decimals, and the same file from a second clean build.
    text = (tmp_path / "a" / "explanations.json").read_text()
    assert "NaN" not in text and all(len(n.split(".")[1]) <= 4 for n in re.findall(r"\d+\.\d+", text))
    render(trained, tiny_index, tmp_path / "b")
    assert (tmp_path / "b" / "explanations.json").read_text() == text


def test_explanation_figures_name_a_bad_colour_map_or_a_missing_artifact(trained, tiny_index, tmp_path):
    built = tmp_path / "built"
    write_explanations(trained["checkpoint"], tiny_index, built, built / "explanations.json", num_images=3, steps=2)
    cases = [
        ({"cmap": "nope"}, built, "'nope'"),
        ({}, tmp_path / "missing", "run the explain step"),
    ]
    for options, arrays, named in cases:
        out = tmp_path / "out"
        with pytest.raises(UserError, match=named) as error:
            render_explanations(built / "explanations.json", arrays, out, **options)
        assert "\n" not in str(error.value) and not out.exists()
    (built / "explanations.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="rerun the explain step"):
        render_explanations(built / "explanations.json", built, tmp_path / "out")


def test_dataset_without_masks_skips_localisation(trained, tiny_index, tmp_path, monkeypatch):
    monkeypatch.setattr(ArraySource, "mask", lambda self, i: None)  # as CIFAR-10 and image folders
    paths, report = render(trained, tiny_index, tmp_path, methods=["layercam"], num_images=3, steps=2)
    assert sorted(p.name for p in paths) == sorted(["explanations.json", "explanations.npz", "maps.npz", *FIGURES])
    entry = report["methods"]["layercam"]
    assert (
        entry["localisation"] is None
        and "no object masks" in entry["localisation_skipped"]
        and report["tolerance_px"] is None
    )
    assert entry["faithfulness"]["steps"] == 2 and len(entry["sanity"]["spearman"]) == 7
    with np.load(tmp_path / "explanations.npz") as npz:
        assert "test_correct" not in npz.files and npz["deletion_layercam"].shape == (3, 3)


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"methods": "gradcam"}, "'gradcam'"),
        ({"methods": ["gradcam", "smoothcam"]}, "'smoothcam'"),
        ({"methods": []}, "gradcam, gradcam++, xgradcam"),
        ({"methods": ["layercam", "layercam"]}, "twice"),
        ({"layers": ["layer2", "layer9"]}, "'layer9'"),
        ({"layers": "layer3"}, "'layer3'"),
        ({"num_images": 0}, "num_images"),
        ({"steps": 1.5}, "steps"),
        ({"seed": "0"}, "seed"),
    ],
)
def test_bad_settings_raise_one_line(trained, tiny_index, tmp_path, settings, named):
    with pytest.raises(UserError, match=named.replace("+", r"\+")) as error:
        render(trained, tiny_index, tmp_path, **settings)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "explanations.json").exists()


def test_bad_metric_inputs_raise_one_line():
    maps, masks = torch.rand(2, 8, 8), square_mask(2, 8, 2, 3)
    model = CountNet()
    cases = [
        (lambda: pointing_game(maps, masks[:1]), "shape"),
        (lambda: pointing_game(maps[0], masks[0]), "N×H×W"),
        (lambda: energy_pointing_game(maps - 1, masks), "non-negative"),
        (lambda: undefined_maps(maps, torch.tensor([True])), "flags"),
        (lambda: deletion_insertion(model, torch.ones(2, 3, 8, 8), maps[:, :4], [0, 0]), "maps must be"),
        (lambda: deletion_insertion(model, torch.ones(2, 3, 8, 8), maps, [0.5, 1.0]), "targets"),
        (lambda: deletion_insertion(model, torch.ones(2, 3, 8, 8), maps, [0, 2]), r"\[0, 2\)"),
        (lambda: deletion_insertion(model, torch.ones(2, 3, 8, 8), maps, [0, 0], steps=0), "steps"),
        (lambda: deletion_insertion(model, torch.ones(2, 3, 8, 8), maps * torch.nan, [0, 0]), "finite"),
        (lambda: spearman(maps, maps[:1]), "shape"),
        (lambda: ssim(maps, maps.flatten(1)), "shape"),
        (lambda: dilate(masks, -1), "radius"),
    ]
    for call, named in cases:
        with pytest.raises(ValueError, match=named) as error:
            call()
        assert "\n" not in str(error.value)


def test_deletion_and_insertion_score_their_shared_ends_once():
    model = CountingNet(RegionNet(torch.ones(32, 32)))
    x, maps = torch.rand(3, 3, 32, 32), random_maps(3, 32, 32, seed=1)
    curves = deletion_insertion(model, x, maps, [0, 0, 0], steps=4, batch_size=5)
    # Per image 3 inner steps of each curve, the image itself and its blurred start; one all-zero image for all.
    assert model.images == 3 * 3 * 2 + 3 + 3 + 1
    with torch.inference_mode():
        whole = model.net(x).softmax(1)[:, 0]
        empty = model.net(torch.zeros(1, 3, 32, 32)).softmax(1)[0, 0]
    torch.testing.assert_close(curves.deletion[:, 0], whole)
    torch.testing.assert_close(curves.insertion[:, -1], whole)
    torch.testing.assert_close(curves.deletion[:, -1], empty.expand(3))
    one_step = deletion_insertion(model.net, x, maps, [0, 0, 0], steps=1)
    torch.testing.assert_close(one_step.deletion, torch.stack([whole, empty.expand(3)], 1))


class CountingNet(nn.Module):
    """Counts the images it is given."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.images = net, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += len(x)
        return self.net(x)
