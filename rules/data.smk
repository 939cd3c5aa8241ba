rule prepare_data:
    input:
        code=package_files("data.__init__", f"data.{CONFIG.dataset.kind}"),
    output:
        index=DATA_INDEX,
    params:
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
