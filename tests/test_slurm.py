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
CPUS = ["--set-threads", "train=2", "evaluate=2", "explain=2", "figures=2"]


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


def test_build_on_slurm_matches_local_build(cluster, tmp_path):
    on_slurm = workdir(tmp_path / "slurm")
    result = snakemake(
        on_slurm,
        "--workflow-profile",
        str(REPO / "profiles/slurm"),
        *CPUS,
        "--slurm-init-seconds-before-status-checks",
        "5",
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    remote_jobs = re.findall(r"^rule (\w+):", log, re.MULTILINE)
    submitted = re.findall(r"submitted with SLURM jobid (\d+)", log)
    assert remote_jobs and len(submitted) == len(remote_jobs) == len(set(submitted))
    assert set(re.findall(r"^localrule (\w+):", log, re.MULTILINE)) == {"all", "report_sources", "render_report"}

    local = workdir(tmp_path / "local")
    result = snakemake(local, "--cores", "2", "--until", "evaluate")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = "results/tiny/metrics.json"
    assert (on_slurm / metrics).read_bytes() == (local / metrics).read_bytes()
