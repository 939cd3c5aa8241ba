"""The tiny build through profiles/slurm on a real one-node SLURM (scripts/local-slurm.sh), against a local build."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, TINY, write_yaml

pytestmark = [pytest.mark.slow, pytest.mark.slurm]
# The one-node cluster may have fewer CPUs than the rules ask for; a job asking more than a node has never starts.
CPUS = ["--set-threads", "train=2", "evaluate=2", "explain=2"]


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=1200)


def workdir(root: Path) -> Path:
    write_yaml(root / "config/config.yaml", TINY)
    shutil.copytree(REPO / "report", root / "report", ignore=shutil.ignore_patterns("_*", ".*"))
    shutil.copy(REPO / "report/_quarto.yml", root / "report")
    return root


@pytest.fixture(scope="module")
def cluster() -> None:
    if shutil.which("apt-get") is None and shutil.which("sinfo") is None:
        pytest.skip("needs SLURM or a Debian machine to install it on (scripts/local-slurm.sh)")
    result = subprocess.run(["bash", str(REPO / "scripts/local-slurm.sh"), "start"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def on_slurm(cluster, tmp_path_factory) -> tuple[Path, str, str]:
    """The tiny build through the profile, first with evaluate's memory too small (SLURM kills it), then as is."""
    root = workdir(tmp_path_factory.mktemp("slurm"))
    profile = [
        "--workflow-profile",
        str(REPO / "profiles/slurm"),
        *CPUS,
        "--slurm-init-seconds-before-status-checks",
        "5",
    ]
    killed = snakemake(root, *profile, "--set-resources", "evaluate:mem_mb=100")
    assert killed.returncode != 0, killed.stderr[-3000:]
    rerun = snakemake(root, *profile)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    return root, killed.stdout + killed.stderr, rerun.stdout + rerun.stderr


def rules_run(log: str) -> list[str]:
    return re.findall(r"^rule (\w+):", log, re.MULTILINE)


def test_killed_job_names_the_limit_and_rerun_keeps_finished_jobs(on_slurm):
    _, killed, rerun = on_slurm
    assert (
        "convscope: error: SLURM killed rule evaluate (results/tiny/metrics.json) at its memory limit: "
        "raise its mem_mb (--set-resources evaluate:mem_mb=" in killed
    )
    # SLURM jobs that finished before the kill (figure jobs run locally, some before it and some after).
    finished = set(re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", killed)) - {"figures"}
    assert {"prepare_data", "train"} <= finished
    assert "evaluate" in rules_run(rerun) and not finished & set(rules_run(rerun))


def test_build_on_slurm_matches_local_build(on_slurm, tmp_path):
    on_slurm, *logs = on_slurm
    log = "".join(logs)
    submitted = re.findall(r"submitted with SLURM jobid (\d+)", log)
    assert rules_run(log) and len(submitted) == len(rules_run(log)) == len(set(submitted))
    assert set(re.findall(r"^localrule (\w+):", log, re.MULTILINE)) == {
        "all",
        "figures",
        "report_sources",
        "render_report",
    }

    local = workdir(tmp_path / "local")
    result = snakemake(local, "--cores", "2", "--until", "evaluate")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = "results/tiny/metrics.json"
    assert (on_slurm / metrics).read_bytes() == (local / metrics).read_bytes()
