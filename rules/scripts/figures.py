import sys

import torch

from convscope import figures, jobs

# One thread: a figure job mostly draws, and two of them share the cores better than one with two threads.
torch.set_num_threads(snakemake.threads)
family, settings = snakemake.wildcards.family, snakemake.params.settings
step = lambda: figures.render(family, dict(snakemake.input), snakemake.output[0], settings)
sys.exit(jobs.guarded(step, snakemake.output, snakemake.log[0]))
