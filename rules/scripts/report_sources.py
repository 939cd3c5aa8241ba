import sys

from convscope import jobs

out, inp = snakemake.output, snakemake.input
step = lambda: jobs.write_report_sources(snakemake.params.models, snakemake.params.config, inp.index, out.generated,
                                         out.variables, snakemake.scriptdir, snakemake.params.benchmarks)
sys.exit(jobs.guarded(step, out, snakemake.log[0]))
