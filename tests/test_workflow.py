"""The Snakemake workflow end to end on a tiny config, and what a rerun rebuilds."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, TINY, write_yaml

pytestmark = pytest.mark.slow

TWO_MODELS = {
    "dataset": TINY["dataset"],
    "models": [TINY["models"][0], {**TINY["models"][0], "name": "second", "arch": "mobilenet_v3_small", "epochs": 1}],
}


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "2", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def planned_jobs(workdir: Path) -> dict[str, int]:
    """Rule name → job count of a dry run, from Snakemake's job-stats table."""
    result = snakemake(workdir, "--dry-run", "--quiet", "rules")
    assert result.returncode == 0, result.stderr
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", result.stdout, re.M) if m.group(1) != "total"}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("workflow")
    write_yaml(workdir / "config/config.yaml", TWO_MODELS)
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
    write_yaml(built / "config/config.yaml", changed)
    try:
        assert planned_jobs(built) == {"train": 1, "evaluate": 1, "all": 1}
    finally:
        write_yaml(built / "config/config.yaml", TWO_MODELS)


def test_invalid_config_fails_before_any_job(built, tmp_path):
    bad = write_yaml(tmp_path / "bad.yaml", {"models": [{"name": "x", "arch": "resnet18", "epochs": "ten"}]})
    result = snakemake(built, "--configfile", str(bad))
    assert result.returncode != 0
    assert "convscope: error: config models[0].epochs = \"ten\": 'ten' is not of type 'integer'" in result.stderr
    assert "rule " not in result.stdout
