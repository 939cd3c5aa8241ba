from convscope import jobs
from convscope.report.sources import write_sources

out, inp, params = snakemake.output, snakemake.input, snakemake.params
step = lambda: write_sources(
    params.models, params.config, inp.index, out.generated, out.variables, snakemake.scriptdir, params.benchmarks
)
jobs.run(step, out, snakemake.log[0])
