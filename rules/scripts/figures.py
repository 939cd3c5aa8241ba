import sys

from convscope import figures, jobs

family, settings = snakemake.wildcards.family, snakemake.params.settings
step = lambda: figures.render(family, dict(snakemake.input), snakemake.output[0], settings)
sys.exit(jobs.guarded(step, snakemake.output, snakemake.log[0]))
