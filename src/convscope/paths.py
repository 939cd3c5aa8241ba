"""Where every artifact lives, relative to the workflow directory.

The Snakemake rules use these patterns as outputs (``{model}`` becomes a wildcard) and the
CLI formats them, so both write the same files.
"""

DATA_INDEX = "data/{dataset}/index.json"
CHECKPOINT = "results/{model}/checkpoint.pt"
HISTORY = "results/{model}/history.json"
METRICS = "results/{model}/metrics.json"
PREDICTIONS = "results/{model}/predictions.csv"
TIMINGS = "results/{model}/timings.json"
FIGURE_DIR = "figures/{model}/{family}"
LOGS = "logs"
BENCHMARKS = "benchmarks/results"
EXPLANATIONS = "results/{model}/explanations.json"
REPORT_DIR = "report"
REPORT_GENERATED = "report/_generated"
REPORT_VARIABLES = "report/_variables.yml"
REPORT_HTML = "report/_output/report.html"
REPORT_PDF = "report/_output/report.pdf"
EXPLANATION_ARRAYS = "figures/{model}/explanations"  # explanations.npz and maps.npz
AGREEMENT = "results/comparison/agreement.json"
COMPARISON_FIGURES = "figures/comparison"
