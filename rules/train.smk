rule train:
    input:
        index=DATA_INDEX,
    output:
        checkpoint=paths.CHECKPOINT,
        history=paths.HISTORY,
    log:
        "logs/train/{model}.log",
    benchmark:
        "benchmarks/results/train/{model}.tsv"
    conda:
        "../environment.yml"
    threads: 4
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=gpus(),
    params:
        code=code("train"),
        model=model_params,
        runtime=runtime_params(),
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
    log:
        "logs/evaluate/{model}.log",
    benchmark:
        "benchmarks/results/evaluate/{model}.tsv"
    conda:
        "../environment.yml"
    threads: 4
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=gpus(),
    params:
        code=code("evaluate"),
        runtime=runtime_params(),
    script:
        "scripts/evaluate.py"
