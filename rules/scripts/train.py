from convscope import jobs, training
from convscope.config import ModelConfig, RuntimeConfig

model = ModelConfig.from_dict(snakemake.params.model)
runtime = RuntimeConfig.from_dict(snakemake.params.runtime)
out = snakemake.output
step = lambda: training.train(model, runtime, snakemake.input.index, out.checkpoint, out.history, snakemake.threads)
jobs.run(step, out, snakemake.log[0])
