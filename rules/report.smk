import glob


rule report_sources:
    input:
        unpack(report_source_inputs),
        templates=sorted(glob.glob(f"{paths.REPORT_DIR}/templates/*.j2")),  # the words of the generated sections
    output:
        generated=directory(paths.REPORT_GENERATED),
        variables=paths.REPORT_VARIABLES,
    log:
        "logs/report/sources.log",
    conda:
        "../environment.yml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        code=code("report_sources"),
        models=CONFIG.model_names,
        config=CONFIG.raw,
        benchmarks=report_benchmarks(),
    script:
        "scripts/report_sources.py"


rule render_report:
    input:
        qmd=f"{paths.REPORT_DIR}/report.qmd",
        project=f"{paths.REPORT_DIR}/_quarto.yml",
        generated=paths.REPORT_GENERATED,
        variables=paths.REPORT_VARIABLES,
    output:
        html=paths.REPORT_HTML,
        pdf=paths.REPORT_PDF,
    log:
        "logs/report/render.log",
    benchmark:
        "benchmarks/results/render_report.tsv"
    conda:
        "../environment.yml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        code=code("render_report"),
    script:
        "scripts/render_report.py"
