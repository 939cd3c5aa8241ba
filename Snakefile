# convscope: train, evaluate and explain CNN classifiers; see README.md.
import sys
from pathlib import Path

from snakemake.utils import min_version

from convscope import cluster
from convscope.config import read_yaml
from convscope.errors import ConfigError

min_version("9.0")

# Snakemake's own reader reports a YAML error, an empty file or a list without the file or the line: read it first.
# (A file given with --configfile is read by Snakemake's command line before this runs; convscope check-config
# names the line.)
if Path("config/config.yaml").exists():
    try:
        read_yaml("config/config.yaml")
    except ConfigError as error:
        sys.exit(f"convscope: error: {error}")


configfile: "config/config.yaml"


include: "rules/common.smk"


wildcard_constraints:
    model="|".join(CONFIG.model_names),
    family="|".join(FIGURE_FAMILIES),


include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/figures.smk"
include: "rules/explain.smk"
include: "rules/compare.smk"
include: "rules/report.smk"


# On a cluster these run on the submit host: they are short (a figure family draws a few images on the CPU), and
# one SLURM job each would spend longer queued and polled than running. Job groups would bundle the figure jobs
# too, but a group asks SLURM for the sum of its jobs' CPUs and memory.
localrules:
    all,
    figures,
    report_sources,
    render_report,


# The model and device checks need torch (seconds to import), so they run once there is a job to run, before it.
onstart:
    check_with_torch()


# A job that SLURM killed at its time or memory limit: name the resource to raise (README, "On a cluster").
onerror:
    for line in cluster.killed_jobs(log):
        print(line, file=sys.stderr)


rule all:
    default_target: True
    input:
        every_output(),
