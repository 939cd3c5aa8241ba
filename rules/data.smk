rule prepare_data:
    output:
        index=DATA_INDEX,
    params:
        code=code("prepare_data"),
        dataset=dataset_params(),
    conda:
        "../environment.yml"
    log:
        "logs/prepare_data.log",
    benchmark:
        "benchmarks/results/prepare_data.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "scripts/prepare_data.py"
