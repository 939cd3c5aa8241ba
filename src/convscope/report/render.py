"""Render the report's Quarto project to a self-contained HTML file and a PDF.

With ``quarto`` on PATH the project is rendered by Quarto. Without it, pandoc (from ``pypandoc-binary``) reads
``report.qmd`` with ``_variables.yml`` as metadata through the Lua filter ``quarto.lua`` (includes, variables, the
subset check, figure and table numbers) and writes HTML or Typst, which ``typst.compile`` turns into the PDF. The
outputs are made in a temporary folder inside the project and moved to ``<project>/_output/`` only when every
requested format succeeded.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
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
# _quarto.yml options (top level or under format: html/typst) that the fallback honours; the others are ignored.
PANDOC_OPTIONS = ("toc", "toc-depth", "number-sections")
TYPST_VARIABLES = ("papersize", "margin", "fontsize")
QUARTO_ARGS = {"html": ["--to", "html", "-M", "embed-resources:true"], "pdf": ["--to", "typst"]}


def _project(project_dir: str | os.PathLike[str]) -> tuple[Path, dict]:
    """The project's folder and the settings of its ``_quarto.yml``."""
    project = Path(project_dir).resolve()
    path = project / "_quarto.yml"
    if not path.is_file():
        raise ReportError(f"{project}: not a Quarto project (no _quarto.yml); pass the folder that holds _quarto.yml")
    if not (project / DOCUMENT).is_file():
        raise ReportError(f"{project / DOCUMENT}: the report document does not exist; create it in {project}")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ReportError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from exc
    if not isinstance(config, dict):
        raise ReportError(f"{path}: must be a YAML mapping")
    return project, config


def _tool(module: str):
    try:
        return __import__(module)
    except ImportError as exc:
        raise ReportError(f"{module} is missing: pip install 'convscope[report]', or install quarto") from exc


def _options(config: dict, writer: str) -> dict:
    """The options of _quarto.yml for ``writer`` (``format: <writer>:`` over the top level) as pandoc defaults."""
    formats = config.get("format") if isinstance(config.get("format"), dict) else {}
    options = {**config, **(formats[writer] if isinstance(formats.get(writer), dict) else {})}
    variables = {key: options[key] for key in TYPST_VARIABLES if key in options and writer == "typst"}
    return {**{key: options[key] for key in PANDOC_OPTIONS if key in options}, "variables": variables}


def _run_pandoc(project: Path, config: dict, writer: str, output: Path) -> None:
    """pandoc on the project's document through quarto.lua; its errors become one-line ReportErrors."""
    metadata = [str(project / VARIABLES)] if (project / VARIABLES).is_file() else []
    defaults = {**COMMON, **WRITERS[writer], **_options(config, writer), "metadata-files": metadata}
    defaults |= {"input-files": [str(project / DOCUMENT)], "output-file": str(output)}
    output.with_suffix(".defaults.json").write_text(json.dumps(defaults), encoding="utf-8")  # JSON is YAML
    cmd = [_tool("pypandoc").get_pandoc_path(), "--defaults", str(output.with_suffix(".defaults.json"))]
    proc = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", cwd=project)
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
    if proc.returncode == 83:  # a filter error: quarto.lua's one-line message follows "Error running filter ..."
        raise ReportError(lines[1])
    if proc.returncode != 0:
        raise ReportError(f"{project / DOCUMENT}: pandoc failed (exit status {proc.returncode}): {' '.join(lines)}")
    for warning in lines:
        log.warning("pandoc: %s", warning)


def check(project_dir: str | os.PathLike[str]) -> None:
    """Check that the project's document keeps to the subset both renderers understand (listed in ``quarto.lua``).

    Raises:
        ReportError: Naming the file and line of the first construct outside the subset.
    """
    project, config = _project(project_dir)
    with tempfile.TemporaryDirectory(dir=project, prefix=".check-") as tmp:
        _run_pandoc(project, config, "native", Path(tmp) / "report.native")


def _render_fallback(project: Path, config: dict, formats: tuple[str, ...], tmp: Path) -> dict[str, Path]:
    # quarto.lua writes Typst image paths relative to a direct subfolder of the project: tmp, then _output/.
    made = {fmt: tmp / ("report.typ" if fmt == "typst" else f"report.{fmt}") for fmt in formats}
    if "html" in formats:
        _run_pandoc(project, config, "html", made["html"])
    if "pdf" in formats or "typst" in formats:
        _run_pandoc(project, config, "typst", tmp / "report.typ")
    if "pdf" in formats:
        typst = _tool("typst")
        try:  # Typst reads files only below its root; the images may lie next to the project
            typst.compile(str(tmp / "report.typ"), output=str(made["pdf"]), root=project.anchor)
        except Exception as exc:  # typst raises its own TypstError; keep the message on one line
            raise ReportError(f"{project / DOCUMENT}: typst failed: {' '.join(str(exc).split())}") from exc
    return made


def _render_quarto(project: Path, config: dict, formats: tuple[str, ...]) -> dict[str, Path]:
    """``quarto render <project> --to html|typst``, into ``<project>/_output/``."""
    quarto = shutil.which("quarto")
    if quarto is None:
        raise ReportError("renderer='quarto' but quarto is not on PATH; install Quarto or use renderer='fallback'")
    settings = config.get("project")
    if not isinstance(settings, dict) or settings.get("output-dir") != OUTPUT_DIR:
        raise ReportError(f"{project / '_quarto.yml'}: set 'project: output-dir: {OUTPUT_DIR}' for render_report")
    check(project)  # the same subset as the fallback, so either renderer gives the same report
    for fmt in formats:
        cmd = [quarto, "render", str(project), *QUARTO_ARGS[fmt]]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=project)
        if proc.returncode != 0:
            tail = " ".join((proc.stderr or proc.stdout).split())[-500:]
            raise ReportError(f"{project / DOCUMENT}: {' '.join(cmd[:2] + cmd[3:])} failed: {tail}")
    return {fmt: project / OUTPUT_DIR / f"report.{fmt}" for fmt in formats}


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
        formats: Any of ``"html"``, ``"pdf"`` and, with the fallback, ``"typst"`` (the intermediate ``report.typ``;
            ``typst compile --root /`` compiles it).

    Returns:
        The written files by format, e.g. ``{"html": ..., "pdf": ...}``.

    Raises:
        ReportError: For a source outside the supported subset (see :func:`check`), a missing tool, or a failed
            pandoc/Typst/Quarto run.
    """
    project, config = _project(project_dir)
    if renderer == "auto":
        renderer = "quarto" if shutil.which("quarto") else "fallback"
    if renderer not in ("quarto", "fallback"):
        raise ReportError(f"renderer {renderer!r}: choose 'auto', 'quarto' or 'fallback'")
    allowed = tuple(QUARTO_ARGS) if renderer == "quarto" else FORMATS
    chosen = tuple(dict.fromkeys((formats,) if isinstance(formats, str) else formats))
    if not chosen or any(f not in allowed for f in chosen):
        raise ReportError(f"formats {list(chosen)!r}: the {renderer} renderer writes {', '.join(allowed)}")
    if renderer == "quarto":
        return _render_quarto(project, config, chosen)
    with tempfile.TemporaryDirectory(prefix=".render-", dir=project) as tmp:
        made = _render_fallback(project, config, chosen, Path(tmp))
        (project / OUTPUT_DIR).mkdir(exist_ok=True)
        return {fmt: path.replace(project / OUTPUT_DIR / path.name) for fmt, path in made.items()}


__all__ = ["ReportError", "check", "render_report"]
