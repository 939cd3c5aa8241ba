import sys

from convscope import jobs
from convscope.config import DatasetConfig

dataset = DatasetConfig.from_dict(snakemake.params.dataset)
sys.exit(jobs.guarded(lambda: jobs.prepare_data(dataset, snakemake.output.index), snakemake.output, snakemake.log[0]))
