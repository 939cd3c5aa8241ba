from convscope import jobs
from convscope.figures.agreement import render_agreement

out, inp, params = snakemake.output, snakemake.input, snakemake.params
checkpoints = dict(zip(params.models, inp.checkpoints))
step = lambda: render_agreement(checkpoints, inp.index, out.figures, out.agreement, **params.settings)
jobs.run(step, out, snakemake.log[0])
