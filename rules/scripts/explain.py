from convscope import jobs
from convscope.explanations import write_explanations

out, inp = snakemake.output, snakemake.input
step = lambda: write_explanations(inp.checkpoint, inp.index, out.arrays, out.explanations, **snakemake.params.settings)
jobs.run(step, out, snakemake.log[0])
