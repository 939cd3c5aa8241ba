rule explain:
    input:
        index=DATA_INDEX,
        checkpoint=paths.CHECKPOINT,
        code=package_files("explain", "cam", "figures.__init__", "figures.gradcam", "figures.failures", "figures.explanations"),
    output:
        explanations=paths.EXPLANATIONS,
        figures=report(directory(paths.EXPLANATION_FIGURES), patterns=["{name}.png"], caption="captions/figures.rst",
                       category="{model}", subcategory="explanations", labels={"figure": "{name}"}),
    params:
        settings=explanation_settings,
    conda:
        "../environment.yml"
    log:
        "logs/explain/{model}.log",
    benchmark:
        "benchmarks/results/explain/{model}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=gpus(),
    script:
        "scripts/explain.py"
