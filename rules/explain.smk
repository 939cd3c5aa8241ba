rule explain:
    input:
        index=DATA_INDEX,
        checkpoint=paths.CHECKPOINT,
    output:
        explanations=paths.EXPLANATIONS,
        arrays=directory(paths.EXPLANATION_ARRAYS),
    log:
        "logs/explain/{model}.log",
    benchmark:
        "benchmarks/results/explain/{model}.tsv"
    conda:
        "../environment.yml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=gpus(),
    params:
        code=code("explain"),
        settings=explanation_settings,
    script:
        "scripts/explain.py"
