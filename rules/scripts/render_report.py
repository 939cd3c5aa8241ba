import sys
from pathlib import Path

from convscope import jobs

out = snakemake.output
step = lambda: jobs.render_report(Path(snakemake.input.project).parent, out.html, out.pdf)
sys.exit(jobs.guarded(step, out, snakemake.log[0]))
