from pathlib import Path

from convscope import jobs
from convscope.report.render import render_report

out = snakemake.output
step = lambda: render_report(Path(snakemake.input.project).parent)
jobs.run(step, out, snakemake.log[0])
