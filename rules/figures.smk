rule figures:
    input:
        unpack(figure_inputs),
    output:
        report(
            directory(paths.FIGURE_DIR),
            patterns=["{name}.png"],
            caption="captions/figures.rst",
            category="{model}",
            subcategory="{family}",
            labels={"figure": "{name}"},
        ),
    log:
        "logs/figures/{model}/{family}.log",
    benchmark:
        "benchmarks/results/figures/{model}/{family}.tsv"
    conda:
        "../environment.yml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        code=figure_code,
        settings=figure_settings,
    script:
        "scripts/figures.py"
