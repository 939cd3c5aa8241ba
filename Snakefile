# convscope: train, evaluate and explain CNN classifiers; see README.md.
from snakemake.utils import min_version

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
include: "rules/compare.smk"
include: "rules/report.smk"


# On a cluster these run on the submit host: they are short, read every model's artifacts, and one SLURM job
# each would spend longer queued and polled than running.
localrules:
    all,
    report_sources,
    render_report,


rule all:
    default_target: True
    input:
        all_outputs(),
