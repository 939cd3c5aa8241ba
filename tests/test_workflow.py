"""The Snakemake workflow end to end on a tiny config, and what a rerun rebuilds."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import zipfile
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, TINY, write_yaml

pytestmark = pytest.mark.slow
FAMILIES = ("architecture", "filters", "feature_maps", "training", "gradcam", "failures")
REPORT_JOBS = ["render_report", "report_sources"]

TWO_MODELS = {
    "dataset": TINY["dataset"],
    "models": [TINY["models"][0], {**TINY["models"][0], "name": "second", "arch": "mobilenet_v3_small", "epochs": 1}],
}


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "2", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def planned_jobs(workdir: Path, *args: str) -> list[str]:
    """The jobs a dry run would run, as sorted "rule model/family" strings."""
    result = snakemake(workdir, "--dry-run", *args)
    assert result.returncode == 0, result.stderr
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", result.stdout):
        rule = re.match(r"(?:local)?rule (\w+):", block.strip())
        if rule:
            line = re.search(r"wildcards: (.*)", block)
            wildcards = dict(re.findall(r"(\w+)=([\w-]+)", line.group(1))) if line else {}
            jobs.append(" ".join([rule.group(1), "/".join(wildcards[k] for k in ("model", "family") if k in wildcards)]).strip())
    return sorted(jobs)


def with_config(workdir: Path, config: dict):
    """Context: the workflow's config replaced for the duration, then restored."""
    import contextlib

    @contextlib.contextmanager
    def swapped():
        write_yaml(workdir / "config/config.yaml", config)
        try:
            yield
        finally:
            write_yaml(workdir / "config/config.yaml", TWO_MODELS)
    return swapped()


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("workflow")
    write_yaml(workdir / "config/config.yaml", TWO_MODELS)
    shutil.copytree(REPO / "report", workdir / "report", ignore=shutil.ignore_patterns("_*", ".*"))
    shutil.copy(REPO / "report/_quarto.yml", workdir / "report")
    result = snakemake(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_build_writes_checkpoints_and_metrics(built):
    for model in ("tiny", "second"):
        metrics = json.loads((built / f"results/{model}/metrics.json").read_text())
        assert set(metrics["splits"]) == {"val", "test"} and metrics["splits"]["test"]["n"] == 40
        assert (built / f"results/{model}/checkpoint.pt").stat().st_size > 0
        assert (built / f"logs/train/{model}.log").read_text().count("epoch") >= 1
        assert (built / f"benchmarks/results/train/{model}.tsv").exists()


def test_rerun_has_nothing_to_do(built):
    result = snakemake(built)
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


def test_changing_one_model_reruns_only_that_model(built):
    changed = {**TWO_MODELS, "models": [TWO_MODELS["models"][0], {**TWO_MODELS["models"][1], "epochs": 2}]}
    with with_config(built, changed):
        jobs = planned_jobs(built)
    figures = [f"figures second/{family}" for family in FAMILIES]
    assert jobs == sorted(["all", "evaluate second", "explain second", "train second", *figures, *REPORT_JOBS])


def test_changing_a_gradcam_option_reruns_only_cam_figures_and_the_report(built):
    with with_config(built, {**TWO_MODELS, "figures": {"gradcam": {"cmap": "magma"}}}):
        jobs = planned_jobs(built)
    # The explanation figures draw their heatmaps with the Grad-CAM colours, so they follow too.
    expected = [f"figures {m}/{f}" for m in ("tiny", "second") for f in ("gradcam", "failures")] + ["explain tiny", "explain second"]
    assert jobs == sorted(["all", *REPORT_JOBS, *expected])


def test_changing_filter_settings_reruns_only_filters(built):
    with with_config(built, {**TWO_MODELS, "figures": {"filters": {"cmap": "PuOr"}}}):
        assert planned_jobs(built) == sorted(["all", "figures second/filters", "figures tiny/filters", *REPORT_JOBS])


def test_editing_a_figure_module_reruns_only_its_family(built):
    # Snakemake 9 reruns on a newer input only when its checksum changed too: a touch is not an edit.
    module = Path(__import__("convscope.figures.filters", fromlist=["x"]).__file__)
    original = module.read_text()
    module.write_text(original + "# an edit\n")
    try:
        assert planned_jobs(built) == sorted(["all", "figures second/filters", "figures tiny/filters", *REPORT_JOBS])
    finally:
        module.write_text(original)


def test_editing_report_prose_reruns_only_the_render(built):
    prose = built / "report/report.qmd"
    original = prose.read_text()
    prose.write_text(original.replace("# Discussion\n", "# Discussion\n\nA sentence added by hand.\n"))
    try:
        assert planned_jobs(built) == ["all", "render_report"]
    finally:
        prose.write_text(original)


def test_every_figure_family_is_built(built):
    for model in ("tiny", "second"):
        for family in FAMILIES:
            files = list((built / f"figures/{model}/{family}").iterdir())
            assert any(f.suffix == ".png" for f in files) or family == "architecture", (model, family)
    with np.load(built / "figures/tiny/gradcam/gradcam.npz") as arrays:
        assert {"inputs", "targets", "labels", "layers"} <= set(arrays.files)
        assert [f"cam_{layer}" in arrays.files for layer in arrays["layers"]] == [True] * 4


def test_report_is_rendered_from_the_build(built):
    html = (built / "report/_output/report.html").read_text()
    assert (built / "report/_output/report.pdf").read_bytes().startswith(b"%PDF-")
    # Self-contained: every image is embedded, and every figure the generated sections show made it in.
    sources = re.findall(r'<img[^>]* src="([^"]*)"', html)
    generated = (built / "report/_generated/models.qmd").read_text()
    assert sources and all(src.startswith("data:image/png;base64,") for src in sources)
    assert len(sources) == generated.count("](_generated/figures/")
    # Numbered captions and resolved references; no shortcode or citation left unexpanded.
    assert "Figure 1: " in html and "Table 1: " in html and ">Table 1</a>" in html
    assert "{{<" not in html and "?@" not in html
    test_top1 = json.loads((built / "results/tiny/metrics.json").read_text())["splits"]["test"]["top1"]
    assert f"{100 * test_top1:.1f}%" in html
    variables = (built / "report/_variables.yml").read_text()
    assert "best:" in variables and "test_top1:" in variables
    appendix = (built / "report/_generated/appendix.qmd").read_text()
    for model in ("tiny", "second"):
        assert hashlib.sha256((built / f"results/{model}/checkpoint.pt").read_bytes()).hexdigest() in appendix
        assert f"train | {model}" in appendix


def test_explanation_quality_is_measured_for_every_method(built):
    for model in ("tiny", "second"):
        report = json.loads((built / f"results/{model}/explanations.json").read_text())
        assert list(report["methods"]) == ["gradcam", "gradcam++", "layercam"]
        for method in report["methods"].values():
            assert method["localisation"] is not None  # shapes has object masks
            faith = method["faithfulness"]
            assert 0 <= faith["random_deletion_auc"] <= 1 and len(method["sanity"]["spearman"]) >= 2
            # At 32 px the deepest layer is 1×1: its maps are constant, flagged, and their AUCs undefined.
            assert faith["n"] + faith["flagged"] == report["num_images"]
            assert (faith["deletion_auc"] is None) == (faith["n"] == 0)
        names = {p.name for p in (built / f"figures/{model}/explanations").iterdir()}
        assert {"localisation.png", "deletion_insertion.png", "sanity_curves.png", "sanity_maps.png"} <= names
    generated = (built / "report/_generated/models.qmd").read_text()
    assert "#tbl-tiny-faithfulness" in generated and "#fig-second-sanity" in generated


def test_invalid_config_fails_before_any_job(built, tmp_path):
    bad = write_yaml(tmp_path / "bad.yaml", {"models": [{"name": "x", "arch": "resnet18", "epochs": "ten"}]})
    result = snakemake(built, "--configfile", str(bad))
    assert result.returncode != 0
    assert "convscope: error: config models[0].epochs = \"ten\": 'ten' is not of type 'integer'" in result.stderr
    assert "rule " not in result.stdout


def test_snakemake_report_holds_every_figure_per_model(built):
    result = snakemake(built, "--report", "report.zip")
    assert result.returncode == 0, result.stderr[-3000:]
    with zipfile.ZipFile(built / "report.zip") as archive:
        names = archive.namelist()
        page = archive.read("report/report.html").decode()
    shipped = sorted(Path(name).name for name in names if name.endswith(".png"))
    for model in ("tiny", "second"):
        for family in (*FAMILIES, "explanations"):
            drawn = {p.name for p in (built / "figures" / model / family).glob("*.png")}
            assert (drawn or family == "architecture") and drawn <= set(shipped), (model, family)  # no PNG: text only
            assert not drawn or f'"{family}"' in page, family  # its subcategory
        assert f'"{model}"' in page  # its category
    assert len(shipped) == len(list((built / "figures").glob("*/*/*.png")))
