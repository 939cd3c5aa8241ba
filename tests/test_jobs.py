"""jobs.run ends a job process at once: what the step printed and logged must be out, and its status kept."""

import os
import subprocess
import sys
import textwrap

# Buffered stdio, as a job gets it from Snakemake: with PYTHONUNBUFFERED set, a missing flush would go unnoticed.
BUFFERED = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}


def write_job(tmp_path, body: str) -> list[str]:
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(
            """
            import multiprocessing, sys, time
            from pathlib import Path
            from convscope import jobs
            from convscope.errors import ConfigError
            tmp = Path(sys.argv[1])
            """
        )
        + textwrap.dedent(body)
    )
    return [sys.executable, str(script), str(tmp_path)]


def run_job(tmp_path, body: str) -> subprocess.CompletedProcess:
    return subprocess.run(write_job(tmp_path, body), capture_output=True, text=True, timeout=120, env=BUFFERED)


def test_a_finished_job_exits_0_with_its_output_and_log_flushed(tmp_path):
    result = run_job(
        tmp_path,
        """
        def step():
            (tmp / "out.txt").write_text("done")
            print("trained 3 epochs", end="")  # no newline: only an explicit flush gets it out
            print("a progress line", file=sys.stderr, end="")
        jobs.run(step, [tmp / "out.txt"], tmp / "job.log")
        print("never reached")
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "trained 3 epochs" and result.stderr == "a progress line"
    assert (tmp_path / "job.log").read_text() == "trained 3 epochs"
    assert (tmp_path / "out.txt").read_text() == "done"


def test_a_user_error_exits_1_with_one_line_and_no_output(tmp_path):
    result = run_job(
        tmp_path,
        """
        def step():
            (tmp / "out.txt").write_text("half")
            raise ConfigError("config models[0].lr = 'x'; use a number")
        jobs.run(step, [tmp / "out.txt"], tmp / "job.log")
        """,
    )
    assert result.returncode == 1
    assert result.stderr == "convscope: error: config models[0].lr = 'x'; use a number\n"
    assert (tmp_path / "job.log").read_text() == "error: config models[0].lr = 'x'; use a number\n"
    assert not (tmp_path / "out.txt").exists()


def test_a_bug_keeps_its_traceback(tmp_path):
    result = run_job(
        tmp_path,
        """
        def step():
            raise KeyError("bug")
        jobs.run(step, [], tmp / "job.log")
        """,
    )
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "KeyError: 'bug'" in result.stderr
    assert "KeyError: 'bug'" in (tmp_path / "job.log").read_text()


def test_a_job_with_a_live_child_process_waits_for_it(tmp_path):
    # No pipes: a child holding the captured stdout open would keep subprocess.run waiting whatever the job did.
    command = write_job(
        tmp_path,
        """
        def child():
            time.sleep(0.5)
            (tmp / "child.txt").write_text("finished")
        def step():
            multiprocessing.get_context("spawn").Process(target=child).start()
        if __name__ == "__main__":
            jobs.run(step, [], tmp / "job.log")
        """,
    )
    job = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120, env=BUFFERED)
    assert job.returncode == 0
    assert (tmp_path / "child.txt").read_text() == "finished"
