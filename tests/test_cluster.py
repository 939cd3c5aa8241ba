"""The message that names the limit to raise when SLURM killed a job, on logs shaped as the one-node cluster's."""

from __future__ import annotations

from pathlib import Path

from convscope.cluster import killed_jobs


def error_block(rule: str, status: str, slurm_log: Path) -> str:
    """An error block of Snakemake's log for a failed SLURM job, as the SLURM executor plugin (2.8) reports it."""
    return (
        f"Error in rule {rule}:\n"
        f"    message: SLURM-job '13' failed, SLURM status is: '{status}'. Detailed failure reason unavailable "
        "(status command is not 'sacct').For further error details see the cluster/cloud log.\n"
        "    jobid: 0\n"
        "    input: data/shapes/index.json\n"
        f"    output: results/tiny/{rule}.out, results/tiny/other.out\n"
        f"    log: logs/{rule}/tiny.log, {slurm_log} (check log file(s) for error details)\n"
        "    external_jobid: 13\n"
    )


def test_killed_jobs_name_rule_output_and_resource(tmp_path):
    slurm_logs = tmp_path / ".snakemake/slurm_logs"
    slurm_logs.mkdir(parents=True)
    (slurm_logs / "1.log").write_text(
        "slurmstepd-vm: error: *** JOB 1 ON vm CANCELLED AT 2026-12-02T17:11:19 DUE TO TIME LIMIT ***\n"
    )
    (slurm_logs / "2.log").write_text(
        "slurmstepd-vm: error: StepId=2.batch exceeded memory limit (149401600 > 104857600), being killed\n"
        "slurmstepd-vm: error: Exceeded job memory limit\n"
    )
    (slurm_logs / "3.log").write_text("Traceback (most recent call last):\nValueError: a bug\n")
    log = tmp_path / "snakemake.log"
    log.write_text(
        "Building DAG of jobs...\n"
        + error_block("train", "TIMEOUT", slurm_logs / "1.log")
        + "Removing output files of failed job train since they might be corrupted:\n"
        + error_block("evaluate", "FAILED", slurm_logs / "2.log")  # a memory kill by polling: FAILED, log says why
        + error_block("explain", "OUT_OF_MEMORY", slurm_logs / "missing.log")  # a cgroup kill: the state says it
        + error_block("figures", "FAILED", slurm_logs / "3.log")  # a failure that is no limit
        + "Error in rule report_sources:\n    jobid: 5\n    output: report/_generated\n"  # a local job
    )
    lines = killed_jobs([log])
    assert [line.split(" at its ")[0] for line in lines] == [
        "convscope: error: SLURM killed rule train (results/tiny/train.out)",
        "convscope: error: SLURM killed rule evaluate (results/tiny/evaluate.out)",
        "convscope: error: SLURM killed rule explain (results/tiny/explain.out)",
    ]
    assert "time limit: raise its runtime (--set-resources train:runtime=" in lines[0]
    assert "memory limit: raise its mem_mb (--set-resources evaluate:mem_mb=" in lines[1]
    assert "memory limit: raise its mem_mb (--set-resources explain:mem_mb=" in lines[2]
