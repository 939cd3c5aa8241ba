"""The Snakemake workflow end to end on a tiny config, and what a rerun rebuilds."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, TINY, write_yaml

from convscope.figures import FAMILIES

pytestmark = pytest.mark.slow
REPORT_JOBS = ["render_report", "report_sources"]

TWO_MODELS = {
    "dataset": TINY["dataset"],
    "models": [TINY["models"][0], {**TINY["models"][0], "name": "second", "arch": "mobilenet_v3_small", "epochs": 1}],
}


def snakemake(workdir: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir)]
    environment = None if env is None else {**os.environ, **env}
    return subprocess.run(
        [*command, "--cores", "2", *args], capture_output=True, text=True, timeout=600, env=environment
    )


def planned_jobs(workdir: Path, *args: str, env: dict | None = None) -> list[str]:
    """The jobs a dry run would run, as sorted "rule model/family" strings."""
    result = snakemake(workdir, "--dry-run", *args, env=env)
    assert result.returncode == 0, result.stderr
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", result.stdout):
        rule = re.match(r"(?:local)?rule (\w+):", block.strip())
        if rule:
            line = re.search(r"wildcards: (.*)", block)
            wildcards = dict(re.findall(r"(\w+)=([\w-]+)", line.group(1))) if line else {}
            jobs.append(
                " ".join([rule.group(1), "/".join(wildcards[k] for k in ("model", "family") if k in wildcards)]).strip()
            )
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
    # Every job records the package modules it imported, for test_code_dependencies_cover_what_jobs_import.
    result = snakemake(workdir, env={"CONVSCOPE_TRACE_IMPORTS": str(workdir / "imports.jsonl")})
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
    # The cross-model comparison reads every checkpoint, so it follows too.
    expected = ["all", "evaluate second", "explain second", "train second", "compare_models", *figures]
    assert jobs == sorted([*expected, *REPORT_JOBS])


def test_changing_a_gradcam_option_reruns_only_cam_figures_and_the_report(built):
    with with_config(built, {**TWO_MODELS, "figures": {"gradcam": {"cmap": "magma"}}}):
        jobs = planned_jobs(built)
    # The explanation figures and the cross-model comparison draw their heatmaps with the same colours; the
    # explanation numbers do not depend on them, so the explain jobs stay.
    families = ("gradcam", "failures", "explanation_quality")
    expected = [f"figures {m}/{f}" for m in ("tiny", "second") for f in families] + ["compare_models"]
    assert jobs == sorted(["all", *REPORT_JOBS, *expected])


def test_changing_filter_settings_reruns_only_filters(built):
    with with_config(built, {**TWO_MODELS, "figures": {"filters": {"cmap": "PuOr"}}}):
        assert planned_jobs(built) == sorted(["all", "figures second/filters", "figures tiny/filters", *REPORT_JOBS])


def test_editing_a_figure_module_reruns_only_its_family(built):
    # Snakemake 9 reruns on a newer input only when its checksum changed too: a touch is not an edit.
    module = Path(__import__("convscope.figures.filters", fromlist=["x"]).__file__)
    original = module.read_text()
    module.write_text(original + "EDITED = True\n")
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
    generated = "".join(p.read_text() for p in (built / "report/_generated").glob("*.qmd"))
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
        arrays = {p.name for p in (built / f"figures/{model}/explanations").iterdir() if not p.name.startswith(".")}
        assert arrays == {"explanations.npz", "maps.npz"}  # numbers only: the explanation_quality family draws
        names = {p.name for p in (built / f"figures/{model}/explanation_quality").iterdir()}
        assert {"localisation.png", "deletion_insertion.png", "sanity_curves.png", "sanity_maps.png"} <= names
    generated = (built / "report/_generated/models.qmd").read_text()
    assert "#tbl-tiny-faithfulness" in generated and "#fig-second-sanity" in generated


def test_models_are_compared_on_the_same_images(built):
    report = json.loads((built / "results/comparison/agreement.json").read_text())
    assert report["models"] == ["tiny", "second"] and report["skipped"] is None and report["size"] == 32
    assert report["layers"] == {"tiny": "layer4", "second": "features.12"}  # each model's deepest default layer
    assert [pair["models"] for pair in report["pairs"]] == [["tiny", "second"]]
    # At 32 px both deepest layers are 1×1: constant maps, counted as undefined rather than compared.
    pair = report["pairs"][0]
    assert pair["n"] + pair["undefined"] == len(report["sample_indices"]) == 8 == len(set(report["sample_indices"]))
    assert {p.name for p in (built / "figures/comparison").glob("agreement.*")} == {"agreement.png", "agreement.npz"}
    section = (built / "report/_generated/agreement.qmd").read_text()
    assert "#tbl-agreement" in section and "#fig-agreement" in section
    html = " ".join((built / "report/_output/report.html").read_text().split())  # the HTML wraps long lines
    assert "Do the models look at the same evidence?" in html and "Agreement of the models" in html
    metrics = json.loads((built / "results/tiny/metrics.json").read_text())["splits"]["test"]
    assert sum(b["count"] for b in metrics["calibration"]["bins"]) == 40 and 0 <= metrics["calibration"]["ece"] <= 1
    assert f"{metrics['calibration']['ece']:.3f}" in (built / "report/_generated/comparison.qmd").read_text()
    assert "#fig-tiny-reliability" in (built / "report/_generated/models.qmd").read_text()


def test_invalid_config_fails_before_any_job(built, tmp_path):
    bad = write_yaml(tmp_path / "bad.yaml", {"models": [{"name": "x", "arch": "resnet18", "epochs": "ten"}]})
    result = snakemake(built, "--configfile", str(bad))
    assert result.returncode != 0
    assert "convscope: error: config models[0].epochs = \"ten\": 'ten' is not of type 'integer'" in result.stderr
    assert "rule " not in result.stdout


def test_a_model_too_small_for_its_input_fails_before_any_job(built, tmp_path):
    bad = write_yaml(tmp_path / "bad.yaml", {"models": [{"name": "x", "arch": "squeezenet1_1", "input_size": 16}]})
    result = snakemake(built, "--configfile", str(bad))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "convscope: error: config models[0].input_size = 16 is too small for squeezenet1_1 (needs >= 17); "
        "raise input_size"
    )
    assert "rule " not in result.stdout + result.stderr and not (built / "results/x").exists()


def test_a_deleted_output_is_rebuilt_with_what_depends_on_it(built, tmp_path):
    deleted = {"figures/tiny/filters": ["figures tiny/filters"], "results/second/history.json": ["train second"]}
    for path, jobs in deleted.items():
        shutil.move(built / path, tmp_path / "kept")
        try:
            planned = planned_jobs(built)
        finally:
            shutil.move(tmp_path / "kept", built / path)
        if path.endswith("history.json"):  # retraining reruns everything of that model, and the model comparison
            jobs = [*jobs, "evaluate second", "explain second", *(f"figures second/{f}" for f in FAMILIES)]
            jobs.append("compare_models")
        assert planned == sorted(["all", *jobs, *REPORT_JOBS]), path


# --- code dependencies: computed from the imports (convscope.codedeps) -----------------------------------------

LOG_KINDS = {
    "prepare_data": "prepare_data",
    "train": "train",
    "evaluate": "evaluate",
    "explain": "explain",
    "sources": "report_sources",
    "render": "render_report",
    "compare_models": "compare_models",
}


def codedeps_of(package: Path, function: str) -> dict:
    """``codedeps.<function>`` (script_closure or fingerprint) of every job kind, as the rules call it, computed
    from the given copy of the package in a fresh interpreter."""
    code = (
        "import json, sys; from convscope import codedeps; from convscope.figures import FAMILIES\n"
        "scripts, compute = sys.argv[1], getattr(codedeps, sys.argv[2])\n"
        "by_name = {'convscope.data': ['convscope.data.shapes']}\n"
        "out = {k: compute(f'{scripts}/{k}.py', by_name) for k in sys.argv[3:]}\n"
        "for name, family in FAMILIES.items():\n"
        "    out[f'figures/{name}'] = compute(f'{scripts}/figures.py',"
        " by_name | {'convscope.figures': [family.module_name]})\n"
        "print(json.dumps({k: sorted(v) if isinstance(v, set) else v for k, v in out.items()}))\n"
    )
    kinds = sorted(set(LOG_KINDS.values()))
    result = subprocess.run(
        [sys.executable, "-c", code, str(REPO / "rules/scripts"), function, *kinds],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(package.parent)},
    )
    return json.loads(result.stdout)


def job_closures(package: Path) -> dict[str, set[str]]:
    """Each job kind's computed code dependencies."""
    return {kind: set(modules) for kind, modules in codedeps_of(package, "script_closure").items()}


def fingerprints(package: Path) -> dict[str, str]:
    """The code fingerprint of every job kind."""
    return codedeps_of(package, "fingerprint")


FAMILY_KINDS = [f"figures/{family}" for family in FAMILIES]
# Which job kinds read another's outputs (rules/*.smk): a rerun of the first reruns these too.
READERS = {
    "prepare_data": ["train", "evaluate", "explain", "compare_models", "report_sources", *FAMILY_KINDS],
    "train": ["evaluate", "explain", "compare_models", "report_sources", *FAMILY_KINDS],
    "evaluate": ["figures/training", "figures/gradcam", "figures/failures", "report_sources"],
    "explain": ["figures/explanation_quality", "report_sources"],
    "compare_models": ["report_sources"],
    "report_sources": ["render_report"],
    **{kind: ["report_sources"] for kind in FAMILY_KINDS},
}


def with_readers(kinds: set[str]) -> set[str]:
    todo, out = list(kinds), set()
    while todo:
        kind = todo.pop()
        if kind not in out:
            out.add(kind)
            todo.extend(READERS.get(kind, []))
    return out


def rerun_kinds(workdir: Path, package: Path) -> set[str]:
    """The job kinds a dry run with ``package`` first on PYTHONPATH would run."""
    jobs = planned_jobs(workdir, env={"PYTHONPATH": str(package.parent)})
    return {
        job.split()[0] if job.split()[0] != "figures" else "figures/" + job.split()[1].split("/")[1]
        for job in jobs
        if job != "all"
    }


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory) -> Path:
    """A copy of the package to edit (first on PYTHONPATH for the dry runs), so the repository is never touched."""
    copy = tmp_path_factory.mktemp("pkg") / "convscope"
    shutil.copytree(Path(__import__("convscope").__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_code_dependencies_cover_what_jobs_import(built, package_copy):
    """Soundness: every package module a job imported while it ran is in its computed closure."""
    closures = job_closures(package_copy)
    seen = set()
    for line in (built / "imports.jsonl").read_text().splitlines():
        record = json.loads(line)
        parts = Path(record["log"]).with_suffix("").parts  # logs/train/tiny, logs/figures/tiny/gradcam, ...
        kind = f"figures/{parts[-1]}" if parts[1] == "figures" else LOG_KINDS.get(parts[1], LOG_KINDS.get(parts[-1]))
        missing = set(record["modules"]) - closures[kind]
        assert not missing, f"{kind} imported {sorted(missing)}, which its computed code dependencies lack"
        seen.add(kind)
    assert seen == set(closures)


def test_editing_any_module_reruns_exactly_the_jobs_that_import_it(built, package_copy):
    """For every module: a real edit changes the code fingerprint of exactly the job kinds whose closure holds it,
    and the dry run reruns exactly those and the jobs that read their outputs."""
    closures, before = job_closures(package_copy), fingerprints(package_copy)
    assert rerun_kinds(built, package_copy) == set()
    for path in sorted(package_copy.rglob("*.py")):
        name = ".".join(path.relative_to(package_copy.parent).with_suffix("").parts).removesuffix(".__init__")
        original = path.read_text()
        path.write_text(original + "\nCODE_EDIT_PROBE = 1\n")
        try:
            importers = {kind for kind, modules in closures.items() if name in modules}
            after = fingerprints(package_copy)
            assert {kind for kind in before if after[kind] != before[kind]} == importers, name
            assert rerun_kinds(built, package_copy) == with_readers(importers), name
        finally:
            path.write_text(original)


def test_editing_only_comments_docstrings_and_layout_reruns_nothing(built, package_copy):
    originals = {path: path.read_text() for path in package_copy.rglob("*.py")}
    try:
        for path, text in originals.items():
            # Every docstring reworded, a comment and blank lines added.
            path.write_text(re.sub(r'^(\s*)"""(?=\S)', r'\1"""Reworded. ', text, flags=re.M) + "\n\n# a comment\n")
        assert planned_jobs(built, env={"PYTHONPATH": str(package_copy.parent)}) == []
    finally:
        for path, text in originals.items():
            path.write_text(text)


def test_snakemake_report_holds_every_figure_per_model(built):
    result = snakemake(built, "--report", "report.zip")
    assert result.returncode == 0, result.stderr[-3000:]
    with zipfile.ZipFile(built / "report.zip") as archive:
        names = archive.namelist()
        page = archive.read("report/report.html").decode()
    shipped = sorted(Path(name).name for name in names if name.endswith(".png"))
    for model in ("tiny", "second"):
        for family in FAMILIES:
            drawn = {p.name for p in (built / "figures" / model / family).glob("*.png")}
            assert (drawn or family == "architecture") and drawn <= set(shipped), (model, family)  # no PNG: text only
            assert not drawn or f'"{family}"' in page, family  # its subcategory
        assert f'"{model}"' in page  # its category
    assert '"comparison"' in page and "agreement.png" in shipped
    assert len(shipped) == len(list((built / "figures").rglob("*.png")))
