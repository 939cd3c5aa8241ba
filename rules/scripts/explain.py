import sys

from convscope import jobs

out, inp = snakemake.output, snakemake.input
step = lambda: jobs.explain(inp.checkpoint, inp.index, out.figures, out.explanations, snakemake.params.settings)
sys.exit(jobs.guarded(step, out, snakemake.log[0]))
