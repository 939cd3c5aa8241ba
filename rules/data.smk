rule prepare_data:
    output:
        index=DATA_INDEX,
    log:
        "logs/prepare_data.log",
    benchmark:
        "benchmarks/results/prepare_data.tsv"
    conda:
        "../environment.yml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        code=code("prepare_data"),
        dataset=dataset_params(),
    script:
        "scripts/prepare_data.py"
