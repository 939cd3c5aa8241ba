"""Start-up benchmark: seconds each job spends importing what it needs before its work starts.

A job is a script in ``rules/scripts/`` run by Snakemake; before its work function starts it imports the package
modules the script names, plus what the package loads by name for that job (the dataset reader of the configured
kind, the figure family's module). For each job this times, in a fresh interpreter per run, the wall time of
``python -c "import <those modules>"`` (median of ``--repeats`` runs), next to three floors: an empty
interpreter, ``import torch`` alone, and ``import snakemake.script`` (what Snakemake's own script preamble imports
in every job, outside this package). It also lists the heavy third-party modules each job ends up importing.

Usage: python benchmarks/bench_imports.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from convscope import codedeps
from convscope.figures import FAMILIES

SCRIPTS = Path(__file__).resolve().parents[1] / "rules" / "scripts"
HEAVY = ("torch", "torchvision", "matplotlib", "pandas", "scipy", "torchinfo", "jinja2", "tqdm", "PIL", "jsonschema")


def jobs() -> dict[str, list[str]]:
    """Each job's imports by a readable name: one row per figure family and per dataset kind."""
    rows: dict[str, list[str]] = {}
    for script in sorted(SCRIPTS.glob("*.py")):
        modules = sorted(codedeps.imports_of(script))
        if script.stem == "figures":
            for name, family in FAMILIES.items():
                rows[f"figures ({name})"] = modules + [family.module_name]
        elif script.stem == "prepare_data":
            for kind in ("shapes", "cifar10", "imagefolder"):
                rows[f"prepare_data ({kind})"] = modules + [f"convscope.data.{kind}"]
        else:
            rows[script.stem] = modules
    return rows


def import_code(modules: list[str]) -> str:
    report = f"import sys; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    return "\n".join([f"import {name}" for name in modules] + [report])


def timed(code: str, repeats: int) -> tuple[float, str]:
    """Median wall seconds of a fresh ``python -c code`` (after one warm-up run), and its last output."""
    seconds, out = [], ""
    for round_ in range(repeats + 1):
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
        if round_:
            seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), out.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print("| job | import s | heavy modules imported |")
    print("|---|---:|---|")
    for name, code in (
        ("(empty interpreter)", "pass"),
        ("(import torch)", "import torch"),
        ("(import snakemake.script)", "import snakemake.script"),
    ):
        print(f"| {name} | {timed(code, args.repeats)[0]:.2f} | |")
    total = 0.0
    for name, modules in jobs().items():
        seconds, heavy = timed(import_code(modules), args.repeats)
        total += seconds
        print(f"| {name} | {seconds:.2f} | {heavy.replace(',', ', ')} |")
    print(f"\nsum over the rows above (not the build's job count): {total:.1f} s")


if __name__ == "__main__":
    main()
