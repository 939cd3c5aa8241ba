rule figures:
    input:
        unpack(figure_inputs),
    output:
        report(directory(paths.FIGURE_DIR), patterns=["{name}.png"], caption="captions/figures.rst",
               category="{model}", subcategory="{family}", labels={"figure": "{name}"}),
    params:
        code=figure_code,
        settings=figure_settings,
    conda:
        "../environment.yml"
    log:
        "logs/figures/{model}/{family}.log",
    benchmark:
        "benchmarks/results/figures/{model}/{family}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    script:
        "scripts/figures.py"
