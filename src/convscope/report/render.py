"""Render the report's Quarto project to a self-contained HTML file and a PDF.

With ``quarto`` on PATH the project is rendered by Quarto. Without it, the fallback renders the same source with
pandoc (the binary of ``pypandoc-binary``) and Typst (the compiler of the ``typst`` package):

1. pandoc reads ``report.qmd`` with ``_variables.yml`` as metadata and the Lua filter ``quarto.lua``, which splices
   ``{{< include >}}`` files in, resolves ``{{< var >}}``, rejects what is outside the subset both renderers
   understand (the header of ``quarto.lua`` lists it) with one line naming the file and the line, and numbers
   figures and tables the way Quarto does; it writes HTML (``report.css``, ``report.js``, all embedded) and Typst
   source (preamble ``typst-header.typ``, Typst's own figure numbering off so numbers are not doubled);
2. ``typst.compile`` turns the Typst source into the PDF.

Outputs are made in a temporary folder inside the project and moved to ``<project>/_output/`` only when every
requested format succeeded.
"""

from __future__ import annotations

import logging
import os
import re
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
FILTER = RESOURCES / "quarto.lua"
HTML_CSS = RESOURCES / "report.css"
HTML_JS = RESOURCES / "report.js"
TYPST_HEADER = RESOURCES / "typst-header.typ"

DOCUMENT = "report.qmd"
OUTPUT_DIR = "_output"
VARIABLES = "_variables.yml"
FORMATS = ("html", "pdf", "typst")
# _quarto.yml options (top level or under format: html/typst) that the fallback honours; others are ignored.
QUARTO_OPTIONS = ("toc", "toc-depth", "number-sections", "papersize", "margin", "fontsize")
# pandoc's Markdown as Quarto reads it, raw HTML/TeX kept as nodes so that quarto.lua can reject them; the filter
# reads included files with the same extensions.
PANDOC_FROM = "markdown-raw_attribute"


def _project(project_dir: str | os.PathLike[str]) -> Path:
    project = Path(project_dir).resolve()
    if not (project / "_quarto.yml").is_file():
        raise ReportError(f"{project}: not a Quarto project (no _quarto.yml); pass the folder that holds _quarto.yml")
    if not (project / DOCUMENT).is_file():
        raise ReportError(f"{project / DOCUMENT}: the report document does not exist; create it in {project}")
    return project


def _pandoc() -> str:
    try:
        import pypandoc
    except ImportError as exc:
        raise ReportError(
            "pandoc is missing: install the report extra (pip install 'convscope[report]') or quarto"
        ) from exc
    return pypandoc.get_pandoc_path()


def _run_pandoc(project: Path, args: list[str], output: Path) -> None:
    """pandoc on the project's document through quarto.lua; its errors become one-line ReportErrors."""
    variables = project / VARIABLES
    cmd = [_pandoc(), str(project / DOCUMENT), "-f", PANDOC_FROM, "--lua-filter", str(FILTER), *args, "-o", str(output)]
    if variables.is_file():
        cmd[2:2] = ["--metadata-file", str(variables)]
    proc = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", cwd=project)
    if proc.returncode != 0:
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        if lines and lines[0].startswith("Error running filter"):  # quarto.lua's message is the next line
            raise ReportError(lines[1] if len(lines) > 1 else lines[0])
        message = " ".join(" ".join(lines).split(" stack traceback:")[0].split()) or f"exit status {proc.returncode}"
        raise ReportError(f"{project / DOCUMENT}: pandoc failed: {message}")
    for warning in proc.stderr.splitlines():
        if warning.strip():
            log.warning("pandoc: %s", warning.strip())


def check(project_dir: str | os.PathLike[str]) -> None:
    """Check that the project's document keeps to the subset both renderers understand (listed in ``quarto.lua``).

    Raises:
        ReportError: Naming the file and line of the first construct outside the subset, missing file, unknown
            variable or reference, or include cycle.
    """
    project = _project(project_dir)
    with tempfile.TemporaryDirectory(dir=project, prefix=".check-") as tmp:
        _run_pandoc(project, ["-t", "native"], Path(tmp) / "report.native")


def _format_options(project: Path, fmt: str) -> dict:
    """The options of ``format: <fmt>:`` in _quarto.yml (with top-level defaults) that the fallback honours."""
    path = project / "_quarto.yml"
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ReportError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from exc
    if not isinstance(config, dict):
        raise ReportError(f"{path}: must be a YAML mapping")
    formats = config.get("format") if isinstance(config.get("format"), dict) else {}
    options = {key: config[key] for key in QUARTO_OPTIONS if key in config}
    if isinstance(formats.get(fmt), dict):
        options.update({key: value for key, value in formats[fmt].items() if key in QUARTO_OPTIONS})
    if "margin" in options and not isinstance(options["margin"], dict):
        raise ReportError(f"{path}: format.{fmt}.margin must be a mapping such as {{x: 2cm, y: 2cm}}")
    return options


def _option_args(project: Path, fmt: str, tmp: Path) -> list[str]:
    """pandoc arguments for the honoured _quarto.yml options."""
    options = _format_options(project, fmt)
    args = []
    if options.get("toc", fmt == "html"):  # HTML gets a table of contents unless toc: false
        args += ["--toc", f"--toc-depth={int(options.get('toc-depth', 3))}"]
    if options.get("number-sections"):
        args.append("--number-sections")
    meta = {key: options[key] for key in ("papersize", "margin", "fontsize") if key in options}
    if meta and fmt == "typst":
        meta_file = tmp / "typst-options.yml"
        meta_file.write_text(yaml.safe_dump({k: v if isinstance(v, dict) else str(v) for k, v in meta.items()}))
        args += ["--metadata-file", str(meta_file)]
    return args


def _render_html(project: Path, out: Path) -> None:
    script = out.parent / "report-js.html"  # embedded as it is: pandoc inlines only what a page links to
    script.write_text(f"<script>\n{HTML_JS.read_text(encoding='utf-8')}</script>\n", encoding="utf-8")
    args = [
        "-t",
        "html5",
        "--standalone",
        "--embed-resources",
        "--css",
        str(HTML_CSS),
        "--include-after-body",
        str(script),
        "--resource-path",
        str(project),
        *_option_args(project, "html", out.parent),
    ]
    _run_pandoc(project, args, out)
    external = [
        src
        for src in re.findall(r"""\bsrc=["']([^"']*)["']""", out.read_text(encoding="utf-8"))
        if not src.startswith("data:")
    ]
    if external:
        raise ReportError(f"{project / DOCUMENT}: the HTML still refers to {external[0]!r}; pandoc could not embed it")


def _render_pdf(project: Path, typ: Path, out: Path) -> None:
    try:
        import typst
    except ImportError as exc:
        raise ReportError(
            "typst is missing: install the report extra (pip install 'convscope[report]') or quarto"
        ) from exc
    # Typst reads files only below its root: the folder that holds the project and every image it shows.
    images = [(typ.parent / src).resolve() for src in re.findall(r'image\("([^"]+)"', typ.read_text(encoding="utf-8"))]
    root = os.path.commonpath([str(project), *map(str, images)])
    try:
        typst.compile(str(typ), output=str(out), root=root)
    except Exception as exc:  # typst raises its own TypstError; keep the message on one line
        raise ReportError(f"{project / DOCUMENT}: typst failed: {' '.join(str(exc).split())}") from exc


def _render_fallback(project: Path, formats: tuple[str, ...], tmp: Path) -> dict[str, Path]:
    made: dict[str, Path] = {}
    if "html" in formats:
        made["html"] = tmp / "report.html"
        _render_html(project, made["html"])
    if "pdf" in formats or "typst" in formats:
        # quarto.lua writes image paths relative to a direct subfolder of the project: tmp, then _output/.
        typ = tmp / "report.typ"
        args = [
            "-t",
            "typst",
            "--standalone",
            "--include-in-header",
            str(TYPST_HEADER),
            *_option_args(project, "typst", tmp),
        ]
        _run_pandoc(project, args, typ)
        if "typst" in formats:
            made["typst"] = typ
        if "pdf" in formats:
            made["pdf"] = tmp / "report.pdf"
            _render_pdf(project, typ, made["pdf"])
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
            ``report.typ``; it compiles with ``typst compile --root <folder holding the project and its images>``).

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
        for fmt, path in made.items():
            made[fmt] = path.replace(project / OUTPUT_DIR / path.name)
        return made
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["ReportError", "check", "render_report"]
