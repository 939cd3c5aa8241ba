# convscope: train, evaluate and explain CNN classifiers; see README.md.
import sys

from snakemake.utils import min_version

from convscope import cluster

min_version("9.0")


configfile: "config/config.yaml"


include: "rules/common.smk"


wildcard_constraints:
    model="|".join(CONFIG.model_names),
    family="|".join(FIGURE_FAMILIES),


include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/figures.smk"
include: "rules/explain.smk"
include: "rules/report.smk"


# On a cluster these run on the submit host: they are short (a figure family draws a few images on the CPU), and
# one SLURM job each would spend longer queued and polled than running. Job groups would bundle the figure jobs
# too, but a group asks SLURM for the sum of its jobs' CPUs and memory.
localrules:
    all,
    figures,
    report_sources,
    render_report,


# A job that SLURM killed at its time or memory limit: name the resource to raise (README, "On a cluster").
onerror:
    for line in cluster.killed_jobs(log):
        print(line, file=sys.stderr)


rule all:
    default_target: True
    input:
        all_outputs(),
