rule train:
    input:
        index=DATA_INDEX,
    output:
        checkpoint=paths.CHECKPOINT,
        history=paths.HISTORY,
    params:
        code=code("train"),
        model=model_params,
        runtime=runtime_params(),
    conda:
        "../environment.yml"
    log:
        "logs/train/{model}.log",
    benchmark:
        "benchmarks/results/train/{model}.tsv"
    threads: 4
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=gpus(),
    script:
        "scripts/train.py"


rule evaluate:
    input:
        index=DATA_INDEX,
        checkpoint=paths.CHECKPOINT,
    output:
        metrics=paths.METRICS,
        predictions=paths.PREDICTIONS,
        timings=paths.TIMINGS,
    params:
        code=code("evaluate"),
        runtime=runtime_params(),
    conda:
        "../environment.yml"
    log:
        "logs/evaluate/{model}.log",
    benchmark:
        "benchmarks/results/evaluate/{model}.tsv"
    threads: 4
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=gpus(),
    script:
        "scripts/evaluate.py"
