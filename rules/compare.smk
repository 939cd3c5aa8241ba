# Do the models look at the same evidence? One job reads every model's checkpoint.
rule compare_models:
    input:
        index=DATA_INDEX,
        checkpoints=expand(paths.CHECKPOINT, model=CONFIG.model_names),
    output:
        agreement=paths.AGREEMENT,
        figures=report(
            directory(paths.COMPARISON_FIGURES),
            patterns=["{name}.png"],
            caption="captions/comparison.rst",
            category="comparison",
            labels={"figure": "{name}"},
        ),
    log:
        "logs/compare_models.log",
    benchmark:
        "benchmarks/results/compare_models.tsv"
    conda:
        "../environment.yml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        code=code("compare_models"),
        models=CONFIG.model_names,
        settings=comparison_settings(),
    script:
        "scripts/compare_models.py"
