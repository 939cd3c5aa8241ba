from convscope import data, jobs
from convscope.config import DatasetConfig

dataset = DatasetConfig.from_dict(snakemake.params.dataset)
jobs.run(lambda: data.prepare(dataset, snakemake.output.index), snakemake.output, snakemake.log[0])
