import sys

from convscope import jobs
from convscope.figures.explanations import render_explanations

out, inp = snakemake.output, snakemake.input
step = lambda: render_explanations(
    inp.checkpoint, inp.index, out.figures, out.explanations, **snakemake.params.settings
)
sys.exit(jobs.guarded(step, out, snakemake.log[0]))
