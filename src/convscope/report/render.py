"""Render the report's Quarto project to a self-contained HTML file and a PDF.

With ``quarto`` on PATH the project is rendered by Quarto. Without it, the fallback renders the same source with
pandoc (the binary of ``pypandoc-binary``) and Typst (the compiler of the ``typst`` package): pandoc reads
``report.qmd`` with ``_variables.yml`` as metadata through the Lua filter ``quarto.lua`` (includes, variables, the
subset check with file:line errors, figure and table numbers; its header lists the subset) and writes HTML
(``report.css`` and ``report-script.html`` embedded) or Typst source (preamble ``typst-header.typ``), which
``typst.compile`` turns into the PDF. Outputs are made in a temporary folder inside the project and moved to
``<project>/_output/`` only when every requested format succeeded.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import yaml

from convscope.errors import ReportError

log = logging.getLogger(__name__)

RESOURCES = Path(__file__).resolve().parent
DOCUMENT = "report.qmd"
OUTPUT_DIR = "_output"
VARIABLES = "_variables.yml"
FORMATS = ("html", "pdf", "typst")
# pandoc's defaults (pandoc --defaults) per writer. Markdown as Quarto reads it, raw HTML/TeX kept as nodes so that
# quarto.lua can reject them; the filter reads included files with the same extensions.
COMMON = {"from": "markdown-raw_attribute", "standalone": True, "filters": [str(RESOURCES / "quarto.lua")]}
WRITERS = {
    "native": {"to": "native"},
    "html": {
        "to": "html5",
        "toc": True,  # unless _quarto.yml says toc: false
        "embed-resources": True,
        "css": [str(RESOURCES / "report.css")],
        "include-after-body": [str(RESOURCES / "report-script.html")],
    },
    "typst": {"to": "typst", "include-in-header": [str(RESOURCES / "typst-header.typ")]},
}
# _quarto.yml options (top level or under format: html/typst) that the fallback honours, by their pandoc names;
# the others are ignored.
PANDOC_OPTIONS = ("toc", "toc-depth", "number-sections")
TYPST_VARIABLES = ("papersize", "margin", "fontsize")


def _project(project_dir: str | os.PathLike[str]) -> Path:
    project = Path(project_dir).resolve()
    if not (project / "_quarto.yml").is_file():
        raise ReportError(f"{project}: not a Quarto project (no _quarto.yml); pass the folder that holds _quarto.yml")
    if not (project / DOCUMENT).is_file():
        raise ReportError(f"{project / DOCUMENT}: the report document does not exist; create it in {project}")
    return project


def _tool(module: str):
    try:
        return __import__(module)
    except ImportError as exc:
        raise ReportError(
            f"{module} is missing: install the report extra (pip install 'convscope[report]') or quarto"
        ) from exc


def _options(project: Path, writer: str) -> dict:
    """The options of _quarto.yml for ``writer`` (``format: <writer>:`` over the top level) as pandoc defaults."""
    path = project / "_quarto.yml"
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ReportError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from exc
    if not isinstance(config, dict):
        raise ReportError(f"{path}: must be a YAML mapping")
    formats = config.get("format") if isinstance(config.get("format"), dict) else {}
    options = {**config, **(formats[writer] if isinstance(formats.get(writer), dict) else {})}
    if not isinstance(options.get("margin", {}), dict):
        raise ReportError(f"{path}: format.{writer}.margin must be a mapping such as {{x: 2cm, y: 2cm}}")
    variables = {key: options[key] for key in TYPST_VARIABLES if key in options and writer == "typst"}
    return {**{key: options[key] for key in PANDOC_OPTIONS if key in options}, "variables": variables}


def _run_pandoc(project: Path, writer: str, output: Path) -> None:
    """pandoc on the project's document through quarto.lua; its errors become one-line ReportErrors."""
    metadata = [str(project / VARIABLES)] if (project / VARIABLES).is_file() else []
    defaults = {**COMMON, **WRITERS[writer], **_options(project, writer), "metadata-files": metadata}
    defaults |= {"input-files": [str(project / DOCUMENT)], "output-file": str(output)}
    output.with_suffix(".defaults.json").write_text(json.dumps(defaults), encoding="utf-8")  # JSON is YAML
    cmd = [_tool("pypandoc").get_pandoc_path(), "--defaults", str(output.with_suffix(".defaults.json"))]
    proc = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", cwd=project)
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
    if proc.returncode != 0:
        if len(lines) > 1 and lines[0].startswith("Error running filter"):
            raise ReportError(lines[1])  # quarto.lua's one-line message
        message = " ".join(" ".join(lines).split(" stack traceback:")[0].split()) or f"exit status {proc.returncode}"
        raise ReportError(f"{project / DOCUMENT}: pandoc failed: {message}")
    for warning in lines:
        log.warning("pandoc: %s", warning)


def check(project_dir: str | os.PathLike[str]) -> None:
    """Check that the project's document keeps to the subset both renderers understand (listed in ``quarto.lua``).

    Raises:
        ReportError: Naming the file and line of the first construct outside the subset, missing file, unknown
            variable or reference, or include cycle.
    """
    project = _project(project_dir)
    with tempfile.TemporaryDirectory(dir=project, prefix=".check-") as tmp:
        _run_pandoc(project, "native", Path(tmp) / "report.native")


def _render_fallback(project: Path, formats: tuple[str, ...], tmp: Path) -> dict[str, Path]:
    # quarto.lua writes Typst image paths relative to a direct subfolder of the project: tmp, then _output/.
    made = {fmt: tmp / ("report.typ" if fmt == "typst" else f"report.{fmt}") for fmt in formats}
    if "html" in formats:
        _run_pandoc(project, "html", made["html"])
    if "pdf" in formats or "typst" in formats:
        _run_pandoc(project, "typst", tmp / "report.typ")
    if "pdf" in formats:
        typst = _tool("typst")
        try:  # Typst reads files only below its root; the images may lie next to the project
            typst.compile(str(tmp / "report.typ"), output=str(made["pdf"]), root=project.anchor)
        except Exception as exc:  # typst raises its own TypstError; keep the message on one line
            raise ReportError(f"{project / DOCUMENT}: typst failed: {' '.join(str(exc).split())}") from exc
    return made


def _render_quarto(project: Path, formats: tuple[str, ...]) -> dict[str, Path]:
    """``quarto render <project> --to html|typst``; _quarto.yml must set ``output-dir: _output``."""
    quarto = shutil.which("quarto")
    if quarto is None:
        raise ReportError("renderer='quarto' but quarto is not on PATH; install Quarto or use renderer='fallback'")
    if "typst" in formats:
        raise ReportError("format 'typst' (the intermediate .typ) is only written by the fallback renderer")
    check(project)  # the same subset as the fallback, so either renderer gives the same report
    outputs = {fmt: project / OUTPUT_DIR / f"report.{fmt}" for fmt in formats}
    started = time.time() - 1  # file systems with coarse timestamps
    try:
        for fmt in formats:
            to = {"html": "html", "pdf": "typst"}[fmt]
            cmd = [quarto, "render", str(project), "--to", to] + (
                ["-M", "embed-resources:true"] if fmt == "html" else []
            )
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=project)
            if proc.returncode != 0:
                tail = " ".join((proc.stderr or proc.stdout).split())[-500:]
                raise ReportError(f"{project / DOCUMENT}: quarto render --to {to} failed: {tail}")
            if not outputs[fmt].is_file() or outputs[fmt].stat().st_mtime < started:
                raise ReportError(
                    f"{project / DOCUMENT}: quarto render --to {to} did not write {outputs[fmt]}; "
                    f"set 'project: output-dir: {OUTPUT_DIR}' in {project / '_quarto.yml'}"
                )
    except BaseException:
        for path in outputs.values():  # leave no partial output behind
            if path.is_file() and path.stat().st_mtime >= started:
                path.unlink()
        raise
    return outputs


def render_report(
    project_dir: str | os.PathLike[str], renderer: str = "auto", formats: Iterable[str] = ("html", "pdf")
) -> dict[str, Path]:
    """Render ``<project>/report.qmd`` to ``<project>/_output/report.html`` and ``report.pdf``.

    The HTML is self-contained (images as data URIs, stylesheet and script inline). With the fallback, nothing is
    written unless every requested format rendered.

    Args:
        project_dir: The Quarto project: the folder holding ``_quarto.yml``, ``report.qmd`` and, when variables
            are used, ``_variables.yml``.
        renderer: ``"quarto"``, ``"fallback"`` (pandoc and Typst) or ``"auto"``: Quarto when ``quarto`` is on
            PATH, the fallback otherwise.
        formats: Any of ``"html"``, ``"pdf"`` and, with the fallback, ``"typst"`` (keeps the intermediate
            ``report.typ``; it compiles with ``typst compile --root /``, as its images may lie outside the project).

    Returns:
        The written files by format, e.g. ``{"html": ..., "pdf": ...}``.

    Raises:
        ReportError: For a source outside the supported subset (see :func:`check`), a missing tool, or a failed
            pandoc/Typst/Quarto run.
    """
    project = _project(project_dir)
    chosen = tuple(dict.fromkeys((formats,) if isinstance(formats, str) else formats))
    if not chosen or any(f not in FORMATS for f in chosen):
        raise ReportError(f"formats {list(chosen)!r}: choose among {', '.join(FORMATS)}")
    if renderer == "auto":
        renderer = "quarto" if shutil.which("quarto") else "fallback"
    if renderer == "quarto":
        return _render_quarto(project, chosen)
    if renderer != "fallback":
        raise ReportError(f"renderer {renderer!r}: choose 'auto', 'quarto' or 'fallback'")
    tmp = Path(tempfile.mkdtemp(prefix=".render-", dir=project))
    try:
        made = _render_fallback(project, chosen, tmp)
        (project / OUTPUT_DIR).mkdir(exist_ok=True)
        return {fmt: path.replace(project / OUTPUT_DIR / path.name) for fmt, path in made.items()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["ReportError", "check", "render_report"]
