import sys

from convscope import jobs
from convscope.config import ModelConfig, RuntimeConfig

model = ModelConfig.from_dict(snakemake.params.model)
runtime = RuntimeConfig.from_dict(snakemake.params.runtime)
out = snakemake.output
sys.exit(jobs.guarded(lambda: jobs.train(model, runtime, snakemake.input.index, out.checkpoint, out.history, snakemake.threads), out, snakemake.log[0]))
