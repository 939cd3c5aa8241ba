"""The one place that turns a step's errors into a clean exit.

Snakemake jobs (``rules/scripts/*.py``, through ``run``) and the ``convscope`` command run each step through
``guarded``, so both behave the same on bad input: a one-line error naming the culprit and the fix, exit status
1, and no half-written output. This module imports no step: a job's code is what its script imports
(``codedeps``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NoReturn, TextIO

from convscope.errors import UserError


class _Tee:
    """Copies a text stream to a log file (print output reaches both the terminal and the log)."""

    def __init__(self, stream: TextIO, log: TextIO) -> None:
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        self.log.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.log.flush()
        self.stream.flush()


def _remove(paths: Iterable[str | Path]) -> None:
    for path in map(Path, paths):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _trace_imports(log: str | Path | None) -> None:
    # For tests that check the computed code dependencies against what a job really imported.
    trace = os.environ.get("CONVSCOPE_TRACE_IMPORTS")
    if trace:
        modules = sorted(name for name in sys.modules if name == "convscope" or name.startswith("convscope."))
        with open(trace, "a") as out:
            out.write(json.dumps({"log": str(log), "modules": modules}) + "\n")


def guarded(step: Callable[[], object], outputs: Iterable[str | Path] = (), log: str | Path | None = None) -> int:
    """Runs one step; a user error becomes one line on stderr (and in the log), exit status 1, outputs removed.

    Returns:
        0 on success, 1 on a user error. Bugs (any other exception) propagate with their traceback.
    """
    outputs = list(outputs)
    with contextlib.ExitStack() as stack:
        if log is not None:
            Path(log).parent.mkdir(parents=True, exist_ok=True)
            log_file = stack.enter_context(open(log, "w"))
            stack.enter_context(contextlib.redirect_stdout(_Tee(sys.stdout, log_file)))
        try:
            step()
            _trace_imports(log)
        except UserError as error:
            _remove(outputs)
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            print(f"convscope: error: {message}", file=sys.stderr)
            if log is not None:
                print(f"error: {message}", file=log_file)
            return 1
        except Exception:
            if log is not None:  # a bug: its traceback goes to the log too, then on to stderr
                traceback.print_exc(file=log_file)
            raise
    return 0


def run(step: Callable[[], object], outputs: Iterable[str | Path], log: str | Path) -> NoReturn:
    """A Snakemake job: runs ``step`` through :func:`guarded` and ends the process with its exit status.

    The process ends at once (``os._exit``) once stdout and stderr are flushed: the outputs and the log are
    written and closed by then, and the interpreter's own shutdown, whose final garbage collection walks every
    object of torch's compiler stack, took ~1.1 s of the mobilenet_v3_small explain job. A job with live child
    processes (loader workers) exits normally, which joins them.
    """
    code = guarded(step, outputs, log)
    sys.stdout.flush()
    sys.stderr.flush()
    # Only multiprocessing starts the children a normal exit must join; a job that never imported it has none.
    multiprocessing = sys.modules.get("multiprocessing")
    if multiprocessing is not None and multiprocessing.active_children():
        sys.exit(code)
    os._exit(code)
