"""Which limit to raise when SLURM killed a job, read from Snakemake's log (printed by the Snakefile's onerror hook)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

# What SLURM leaves when it kills a job at a limit: the job state the executor plugin reports, or slurmstepd's line
# in the job's SLURM log (a memory kill by polling, jobacct_gather, leaves the state FAILED; cgroups say oom_kill).
KILLED_AT = {
    "runtime": ("time limit", re.compile(r"'TIMEOUT'|DUE TO TIME LIMIT")),
    "mem_mb": ("memory limit", re.compile(r"'OUT_OF_MEMORY'|exceeded (?:job )?memory limit|oom[-_ ]kill", re.I)),
}
ERROR = re.compile(r"^Error in rule (\w+):\n((?:    .*\n?)*)", re.MULTILINE)


def killed_jobs(logs: Iterable[str | Path]) -> list[str]:
    """One line per job that SLURM killed at a limit: the rule, its first output and the resource to raise.

    Args:
        logs: Snakemake's log files of the failed run (the ``log`` of an ``onerror`` hook).
    """
    lines = []
    for log in logs:
        for rule, block in ERROR.findall(Path(log).read_text(errors="replace")):
            status = re.search(r"SLURM status is: ('\w+')", block)
            if status is None:  # not a SLURM job
                continue
            evidence = status.group(1) + "".join(
                Path(path).read_text(errors="replace")
                for path in re.findall(r"\S+/slurm_logs/\S+\.log", block)
                if Path(path).is_file()
            )
            output = re.search(r"^    output: ([^,\s]+)", block, re.MULTILINE)
            job = f"rule {rule} ({output.group(1)})" if output else f"rule {rule}"
            for resource, (limit, pattern) in KILLED_AT.items():
                if pattern.search(evidence):
                    lines.append(
                        f"convscope: error: SLURM killed {job} at its {limit}: raise its {resource} (--set-resources "
                        f"{rule}:{resource}=..., or set-resources in profiles/slurm/config.yaml) and run the same "
                        "command again"
                    )
    return lines
