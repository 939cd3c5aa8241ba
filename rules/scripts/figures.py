from convscope import figures, jobs

# Torch takes its thread count from OMP_NUM_THREADS, which Snakemake sets to the rule's threads (one: a figure job
# mostly draws, and two of them share the cores better than one with two threads). Not importing torch here
# keeps it out of the families that draw from JSON alone.
family, settings = snakemake.wildcards.family, snakemake.params.settings
step = lambda: figures.render(family, dict(snakemake.input), snakemake.output[0], settings)
jobs.run(step, snakemake.output, snakemake.log[0])
