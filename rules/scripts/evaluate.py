import sys

from convscope import evaluation, jobs
from convscope.config import RuntimeConfig

runtime = RuntimeConfig.from_dict(snakemake.params.runtime)
out, inp = snakemake.output, snakemake.input
step = lambda: evaluation.evaluate(
    runtime, inp.index, inp.checkpoint, out.metrics, out.predictions, out.timings, snakemake.threads
)
sys.exit(jobs.guarded(step, out, snakemake.log[0]))
