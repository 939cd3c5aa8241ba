from convscope import evaluation, jobs
from convscope.config import RuntimeConfig

runtime = RuntimeConfig.from_dict(snakemake.params.runtime)
out, inp = snakemake.output, snakemake.input
step = lambda: evaluation.evaluate_model(
    inp.checkpoint, inp.index, out.metrics, out.predictions, out.timings, runtime, snakemake.threads
)
jobs.run(step, out, snakemake.log[0])
