"""Render the report's Quarto project to a self-contained HTML file and a PDF.

With ``quarto`` on PATH the project is rendered by Quarto. Without it, the
fallback renders the same source with pandoc (the binary shipped by
``pypandoc-binary``) and Typst (the compiler shipped by the ``typst`` package):

1. :func:`expand`, a pre-pass, expands ``{{< include >}}`` and
   ``{{< var >}}`` shortcodes and checks that the source keeps to the subset
   both renderers understand (see :data:`SUPPORTED`); anything else is a
   :class:`ReportError` naming the file, the line and the construct.
2. pandoc reads the expanded Markdown with the Lua filter ``crossref.lua``,
   which numbers figures (``#fig-*``) and tables (``#tbl-*``) in document
   order the way Quarto does ("Figure 1: caption", references reading
   "Figure 1" and linking to the figure), and writes standalone HTML with
   embedded resources and ``report.css``, and Typst source with the preamble
   ``typst-header.typ`` (Typst's own figure numbering off, so numbers are not
   doubled).
3. ``typst.compile`` turns the Typst source into the PDF.

Outputs are rendered into a temporary folder inside the project and moved to
``<project>/_output/`` only when every requested format succeeded.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from convscope.errors import ReportError

log = logging.getLogger(__name__)

RESOURCES = Path(__file__).resolve().parent
CROSSREF_FILTER = RESOURCES / "crossref.lua"
HTML_CSS = RESOURCES / "report.css"
TYPST_HEADER = RESOURCES / "typst-header.typ"

DOCUMENT = "report.qmd"
OUTPUT_DIR = "_output"
VARIABLES = "_variables.yml"
FORMATS = ("html", "pdf", "typst")
FRONT_MATTER_KEYS = ("title", "subtitle", "author", "date", "abstract")
# _quarto.yml options (top level or under format: html/typst) that the fallback honours; others are ignored.
QUARTO_OPTIONS = ("toc", "toc-depth", "number-sections", "papersize", "margin", "fontsize")

SUPPORTED = """\
front matter (main file only): title, subtitle, author, date, abstract (strings);
{{< include path >}} alone on a line between blank lines (path relative to the project directory);
{{< var key >}} / {{< var a.b.c >}} from _variables.yml;
figures: a paragraph holding only ![Caption](path.png){#fig-id width=80%}, referenced as @fig-id;
tables: pipe table followed by ': Caption {#tbl-id}', referenced as @tbl-id;
headings # to #### with {.unnumbered}, {.appendix}, {-} or {#id};
plain Markdown (lists, emphasis, links, pipe tables, ```lang code blocks, <!-- comments -->)."""

# Pandoc's Markdown as Quarto reads it, without raw HTML/TeX: anything that
# slips past the pre-pass shows up as literal text instead of vanishing.
PANDOC_FROM = "markdown-raw_html-raw_tex-raw_attribute"

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
_INCLUDE = re.compile(r"^\{\{<\s*include\s+(\S+?)\s*>\}\}\s*$")
_VAR = re.compile(r"\{\{<\s*var\s+([A-Za-z0-9_][A-Za-z0-9_.\-]*)\s*>\}\}")
_SHORTCODE = re.compile(r"\{\{<\s*([^\s>]*)")
_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t]*$")
_HEADING_ATTR = re.compile(r"[ \t]*(\{[^{}]*\})$")
_IMAGE = re.compile(
    r"!\[(?P<caption>(?:\\.|\[(?:\\.|[^\]\\])*\]|[^\]\\\[])*)\]"
    r"\((?P<src><[^>]*>|[^)\s]+)(?:\s+\"[^\"]*\")?\)"
    r"(?P<attr>\{[^{}]*\})?"
)
_TABLE_CAPTION = re.compile(r"^ {0,3}:[ \t]+(?P<text>.*?)(?P<attr>\{[^{}]*\})?[ \t]*$")
_DIMENSION = re.compile(r"^\d+(\.\d+)?(%|px|cm|mm|in|pt|em)?$")
_LABEL = re.compile(r"^#((fig|tbl)-[A-Za-z0-9_][A-Za-z0-9_\-:.]*)$")
_HTML_TAG = re.compile(r"<(/?[A-Za-z][A-Za-z0-9-]*)(\s[^<>]*)?/?>")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
_LINK_TARGET = re.compile(r"\]\([^)]*\)")
_AUTOLINK = re.compile(r"<[A-Za-z][A-Za-z0-9+.\-]*:[^<>\s]*>")
# A pandoc citation: @ not preceded by a word character, then a key (letters,
# digits, _ and internal punctuation) or a {braced key}.
_CITATION = re.compile(
    r"(?<![\w@])@(\{[^}]*\}|[A-Za-z0-9_](?:[A-Za-z0-9_]|[:.#$%&\-+?<>~/](?=[A-Za-z0-9_]))*)"
)
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
_MD_PUNCTUATION = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


@dataclass(frozen=True)
class _Loc:
    """A line of a source file, for error messages."""

    path: Path
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass
class _Expanded:
    """The pre-pass result: the Markdown text and what the renderer needs to know about it."""

    text: str
    labels: dict[str, _Loc] = field(default_factory=dict)
    references: list[tuple[str, _Loc]] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)
    has_title: bool = False


def escape_markdown(text: str) -> str:
    """Escape a plain string so that it renders literally in the report's Markdown.

    Every ASCII punctuation character is backslash-escaped (pandoc Markdown
    accepts an escape before any of them), which covers Markdown syntax
    (``*``, ``_``, ``[``, ``]``, backtick, backslash, ``#`` and ``-`` at a
    line start), pipe-table cells (``|``), citations (``@``), raw HTML (``<``),
    math (``$``), smart punctuation (``--``, ``...``, quotes) and shortcodes
    (``{``). Line breaks become spaces. The result is safe in a paragraph, a
    heading, a caption, a table cell and a ``_variables.yml`` value (there
    written as a plain or single-quoted YAML scalar: YAML double quotes treat
    backslashes as escapes).

    Args:
        text: Any string, e.g. a class name such as ``"a*b_c#d$e@f<g|h"``.

    Returns:
        The Markdown source that renders as ``text``.
    """
    text = " ".join(str(text).splitlines())
    return "".join("\\" + ch if ch in _MD_PUNCTUATION else ch for ch in text)


# ---------------------------------------------------------------------------
# Pre-pass: includes, variables and the supported subset


def _project(project_dir: str | os.PathLike[str]) -> Path:
    project = Path(project_dir).resolve()
    if not (project / "_quarto.yml").is_file():
        raise ReportError(f"{project}: not a Quarto project (no _quarto.yml); pass the folder that holds _quarto.yml")
    return project


class _Expander:
    """Expands one document of a project; collects labels, references and images."""

    def __init__(self, project: Path) -> None:
        self.project = project
        self.variables: dict | None = None
        self.result = _Expanded(text="")
        self.stack: list[Path] = []

    # -- variables ---------------------------------------------------------
    def _variable(self, key: str, loc: _Loc) -> str:
        if self.variables is None:
            path = self.project / VARIABLES
            if not path.is_file():
                raise ReportError(f"{loc}: {{{{< var {key} >}}}} but {path} does not exist; create it or remove the shortcode")
            try:
                loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
            except yaml.YAMLError as exc:
                raise ReportError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from exc
            if loaded is not None and not isinstance(loaded, dict):
                raise ReportError(f"{path}: must be a mapping of variable names to values")
            self.variables = loaded or {}
        node: object = self.variables
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ReportError(f"{loc}: unknown variable {{{{< var {key} >}}}}; define {key!r} in {self.project / VARIABLES}")
            node = node[part]
        if isinstance(node, bool):
            return "true" if node else "false"
        if isinstance(node, (str, int, float, _dt.date)):
            value = str(node)
            if "\n" in value.strip():
                raise ReportError(f"{loc}: variable {key!r} holds several lines; variables must be one line of Markdown")
            return value.strip()
        raise ReportError(
            f"{loc}: variable {key!r} is a {type(node).__name__}, not a string or number; "
            f"point {{{{< var >}}}} at a single value in {self.project / VARIABLES}"
        )

    def _substitute(self, line: str, loc: _Loc) -> str:
        if re.search(r"\{\{\{<|\{\{<\s*/\*", line):
            raise ReportError(f"{loc}: escaped shortcodes ({{{{</* ... */>}}}} or {{{{{{< ... >}}}}}}) are not supported")
        line = _VAR.sub(lambda m: self._variable(m.group(1), loc), line)
        m = _SHORTCODE.search(line)
        if m:
            name = m.group(1) or "?"
            if name == "include":
                raise ReportError(f"{loc}: {{{{< include >}}}} must stand alone on its own line")
            raise ReportError(
                f"{loc}: unsupported shortcode {{{{< {name} ... >}}}}; only include and var are supported by the fallback renderer"
            )
        return line

    # -- files ---------------------------------------------------------------
    def _resolve_include(self, target: str, loc: _Loc) -> Path:
        target = target.strip("\"'")
        path = (self.project / target.lstrip("/")).resolve()
        if not path.is_file():
            raise ReportError(f"{loc}: included file {path} does not exist; paths are relative to the project directory {self.project}")
        if path in self.stack:
            chain = " -> ".join(p.name for p in [*self.stack, path])
            raise ReportError(f"{loc}: include cycle ({chain}); remove one of these includes")
        return path

    def expand_file(self, path: Path, main: bool, out: list[str]) -> None:
        self.stack.append(path)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise ReportError(f"{path}: not UTF-8 text ({exc.reason}); save it as UTF-8") from exc
        start = 0
        if lines and lines[0].strip() == "---":
            if not main:
                raise ReportError(f"{_Loc(path, 1)}: included files may not have YAML front matter; move it to the main document")
            start = self._front_matter(path, lines, out)
        self._body(path, lines, start, out)
        self.stack.pop()

    def _front_matter(self, path: Path, lines: list[str], out: list[str]) -> int:
        for end in range(1, len(lines)):
            if lines[end].strip() in ("---", "..."):
                break
        else:
            raise ReportError(f"{_Loc(path, 1)}: YAML front matter is not closed; end it with a line '---'")
        block = [self._substitute(lines[i], _Loc(path, i + 1)) for i in range(1, end)]
        try:
            meta = yaml.safe_load("\n".join(block)) or {}
        except yaml.YAMLError as exc:
            raise ReportError(f"{_Loc(path, 1)}: front matter is not valid YAML ({' '.join(str(exc).split())})") from exc
        if not isinstance(meta, dict):
            raise ReportError(f"{_Loc(path, 1)}: front matter must be a YAML mapping")
        for key, value in meta.items():
            loc = _Loc(path, next((i + 1 for i in range(1, end) if lines[i].startswith(f"{key}:")), 1))
            if key not in FRONT_MATTER_KEYS:
                raise ReportError(
                    f"{loc}: front matter key {key!r} is not supported (only {', '.join(FRONT_MATTER_KEYS)}); "
                    "put format options in _quarto.yml"
                )
            if not isinstance(value, (str, int, float, _dt.date)) or isinstance(value, bool):
                raise ReportError(f"{loc}: front matter {key!r} must be a string")
        self.result.has_title = bool(meta.get("title"))
        out.extend(["---", *block, "---"])
        return end + 1

    def _body(self, path: Path, lines: list[str], start: int, out: list[str]) -> None:
        fence: str | None = None
        fence_loc: _Loc | None = None
        in_comment = False
        previous_table = False  # the last non-blank line was a pipe-table row
        for i in range(start, len(lines)):
            raw = lines[i]
            loc = _Loc(path, i + 1)
            if fence is not None:  # inside a fenced code block: literal text
                m = _FENCE.match(raw)
                if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and not m.group(2).strip():
                    fence = None
                elif "{{<" in raw:
                    raise ReportError(f"{loc}: shortcodes inside code blocks are not supported")
                elif fence_loc is not None and fence_loc.line == i and raw.startswith("#|"):
                    raise ReportError(f"{loc}: cell option '#|' found; executable cells are not supported")
                out.append(raw)
                continue
            if in_comment:
                if "-->" in raw:
                    in_comment = False
                    raw = raw.split("-->", 1)[1]
                    if not raw.strip():
                        out.append("")
                        continue
                else:
                    out.append("")
                    continue
            m = _FENCE.match(raw)
            if m:
                info = m.group(2).strip()
                if "{" in info:
                    raise ReportError(
                        f"{loc}: code block {m.group(1)}{info} has braces: executable cells and attributes are not supported; "
                        f"write {m.group(1)}lang (e.g. {m.group(1)}text)"
                    )
                if m.group(1)[0] == "`" and "`" in info:
                    raise ReportError(f"{loc}: malformed code fence {raw.strip()!r}")
                fence, fence_loc = m.group(1), loc
                out.append(raw)
                continue
            inc = _INCLUDE.match(raw.strip())
            if inc:
                before = lines[i - 1].strip() if i > start else ""
                after = lines[i + 1].strip() if i + 1 < len(lines) else ""
                if before or after:
                    raise ReportError(f"{loc}: {{{{< include >}}}} must be surrounded by blank lines (Quarto requires it)")
                target = self._resolve_include(inc.group(1), loc)
                self.expand_file(target, main=False, out=out)
                previous_table = False
                continue
            line, in_comment = self._strip_comments(raw)
            line = self._substitute(line, loc)
            self._check_line(line, loc, lines, i, start, previous_table)
            if line.strip():
                previous_table = line.lstrip().startswith("|")
            out.append(line)
        if fence is not None:
            raise ReportError(f"{fence_loc}: code block is never closed; add a closing {fence}")
        if in_comment:
            raise ReportError(f"{path}: an HTML comment '<!--' is never closed; add '-->'")

    @staticmethod
    def _strip_comments(line: str) -> tuple[str, bool]:
        """Removes <!-- comments --> (Quarto passes them to HTML, where they are invisible)."""
        visible = _CODE_SPAN.sub(lambda m: "\0" * len(m.group(0)), line)
        out, pos = [], 0
        while True:
            start = visible.find("<!--", pos)
            if start < 0 or (start > 0 and visible[start - 1] == "\\"):
                out.append(line[pos:])
                return "".join(out), False
            out.append(line[pos:start])
            end = visible.find("-->", start + 4)
            if end < 0:
                return "".join(out), True
            pos = end + 3

    # -- the subset ----------------------------------------------------------
    def _check_line(self, line: str, loc: _Loc, lines: list[str], i: int, start: int, previous_table: bool) -> None:
        stripped = line.strip()
        if not stripped:
            return
        if stripped.startswith(":::"):
            raise ReportError(f"{loc}: fenced divs / callouts (':::') are not supported; use plain Markdown")
        if stripped.startswith("#|"):
            raise ReportError(f"{loc}: cell option '#|' found; executable cells are not supported")
        # Protect escapes and code spans from the checks below.
        plain = re.sub(r"\\.", "\0\0", line)
        plain = _CODE_SPAN.sub(lambda m: "\0" * len(m.group(0)), plain)
        consumed = plain

        heading = _HEADING.match(plain)
        if heading:
            level = len(heading.group(1))
            if level > 4:
                raise ReportError(f"{loc}: heading level {level} is too deep; use # to ####")
            attr = _HEADING_ATTR.search(plain)
            if attr:
                self._check_heading_attr(attr.group(1), loc)
                consumed = plain[: attr.start()]

        for m in _IMAGE.finditer(plain):
            self._check_image(line, m, loc, lines, i, start)
            consumed = consumed.replace(m.group(0), " " * len(m.group(0)), 1)

        caption = _TABLE_CAPTION.match(plain)
        if caption and previous_table:
            attr = caption.group("attr")
            if attr:
                inner = attr[1:-1].split()
                label = _LABEL.match(inner[0]) if len(inner) == 1 else None
                if not label or label.group(2) != "tbl":
                    raise ReportError(f"{loc}: table caption attributes {attr} are not supported; write {{#tbl-name}} only")
                self._label(label.group(1), loc)
                consumed = consumed.replace(attr, " " * len(attr), 1)

        if re.search(r"\{[#.]|\]\{", consumed):
            raise ReportError(
                f"{loc}: attribute braces in {stripped[:60]!r} are not supported here; "
                "labels go on figures ({#fig-x}) and table captions ({#tbl-x}), classes on headings only"
            )
        tag = _HTML_TAG.search(consumed) or re.search(r"<!--", consumed)
        if tag:
            raise ReportError(f"{loc}: raw HTML {tag.group(0)!r} is not supported; use Markdown (escape a literal < as \\<)")

        scan = _LINK_TARGET.sub("]", _AUTOLINK.sub("", consumed))
        for m in _CITATION.finditer(scan):
            key = m.group(1)
            if key.startswith("{") or not (key.startswith("fig-") or key.startswith("tbl-")):
                raise ReportError(
                    f"{loc}: '@{key}' is a citation; only @fig-... and @tbl-... references are supported (write \\@ for a literal @)"
                )
            self.result.references.append((key, loc))

    @staticmethod
    def _check_heading_attr(attr: str, loc: _Loc) -> None:
        for token in attr[1:-1].split():
            if token in (".unnumbered", ".appendix", "-"):
                continue
            if token.startswith("#") and len(token) > 1 and not _LABEL.match(token):
                continue
            raise ReportError(f"{loc}: heading attribute {token!r} is not supported; use {{.unnumbered}}, {{.appendix}} or {{#id}}")

    def _check_image(self, line: str, m: re.Match, loc: _Loc, lines: list[str], i: int, start: int) -> None:
        src = line[m.start("src") : m.end("src")].strip("<>")  # m matched the escape-masked copy
        if _URL.match(src) or src.startswith("/") or src.startswith("\\"):
            raise ReportError(f"{loc}: image {src!r} must be a file path relative to the project directory (no URLs, no absolute paths)")
        path = (self.project / src).resolve()
        if not path.is_file():
            raise ReportError(f"{loc}: image {path} does not exist; paths are relative to the project directory {self.project}")
        self.result.images.append(path)
        attr = line[m.start("attr") : m.end("attr")] if m.group("attr") else ""
        if not attr:
            return
        label = None
        for token in attr[1:-1].split():
            key, _, value = token.partition("=")
            if _LABEL.match(token) and token.startswith("#fig-") and label is None:
                label = token[1:]
            elif key in ("width", "height") and _DIMENSION.match(value.strip("\"'")):
                continue
            else:
                raise ReportError(f"{loc}: image attribute {token!r} is not supported; use {{#fig-name width=80%}}")
        if label is None:
            return
        if not m.group("caption").strip():
            raise ReportError(f"{loc}: figure #{label} has no caption; write ![Caption](...){{#{label}}}")
        before = lines[i - 1].strip() if i > start else ""
        after = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if before or after or line.strip() != line[m.start() : m.end()].strip():
            raise ReportError(f"{loc}: figure #{label} must be a paragraph of its own (blank lines around, nothing else on the line)")
        self._label(label, loc)

    def _label(self, label: str, loc: _Loc) -> None:
        if label in self.result.labels:
            raise ReportError(f"{loc}: label #{label} is already used at {self.result.labels[label]}; labels must be unique")
        self.result.labels[label] = loc


def _expand(project: Path, qmd_name: str) -> _Expanded:
    source = project / qmd_name
    if not source.is_file():
        raise ReportError(f"{source}: the report document does not exist; create it in the project {project}")
    expander = _Expander(project)
    out: list[str] = []
    expander.expand_file(source.resolve(), main=True, out=out)
    result = expander.result
    for key, loc in result.references:
        if key not in result.labels:
            kind = "figure" if key.startswith("fig-") else "table"
            raise ReportError(f"{loc}: unknown reference @{key}: no {kind} has the label #{key}")
    result.text = "\n".join(out) + "\n"
    return result


def expand(project_dir: str | os.PathLike[str], qmd_name: str = DOCUMENT) -> str:
    """Expand includes and variables of a Quarto document into one Markdown text.

    This is the fallback renderer's pre-pass. It also checks that the source
    keeps to the subset both Quarto and the fallback render alike (see
    :data:`SUPPORTED`): every figure and table reference must name an existing
    ``#fig-``/``#tbl-`` label, and images must exist.

    Args:
        project_dir: The Quarto project: the folder holding ``_quarto.yml``
            (and ``_variables.yml`` when variables are used). Include and
            image paths are relative to it.
        qmd_name: The document inside the project.

    Returns:
        The Markdown text, front matter included, with every shortcode expanded.

    Raises:
        ReportError: For a construct outside the subset, a missing file, an
            unknown variable or reference, or an include cycle; the message
            names the file and line.
    """
    return _expand(_project(project_dir), qmd_name).text


# ---------------------------------------------------------------------------
# Rendering


def _pandoc() -> str:
    try:
        import pypandoc
    except ImportError as exc:
        raise ReportError("pandoc is missing: install the report extra (pip install 'convscope[report]') or put quarto on PATH") from exc
    return pypandoc.get_pandoc_path()


def _run_pandoc(project: Path, text: str, args: list[str], output: Path) -> None:
    cmd = [_pandoc(), "-f", PANDOC_FROM, "--lua-filter", str(CROSSREF_FILTER), *args, "-o", str(output)]
    proc = subprocess.run(cmd, input=text, capture_output=True, text=True, encoding="utf-8", cwd=project)
    if proc.returncode != 0:
        message = " ".join(proc.stderr.split()).split(" stack traceback:")[0] or f"exit status {proc.returncode}"
        raise ReportError(f"{project / DOCUMENT}: pandoc failed: {message}")
    for warning in proc.stderr.splitlines():
        if warning.strip():
            log.warning("pandoc: %s", warning.strip())


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


def _option_args(options: dict, tmp: Path, fmt: str) -> list[str]:
    """pandoc arguments for the honoured _quarto.yml options."""
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


def _render_html(project: Path, doc: _Expanded, out: Path) -> None:
    args = ["-t", "html5", "--standalone", "--embed-resources", "--css", str(HTML_CSS),
            "--resource-path", str(project), *_option_args(_format_options(project, "html"), out.parent, "html")]
    if not doc.has_title:
        args += ["--metadata", f"pagetitle={project.name}"]
    _run_pandoc(project, doc.text, args, out)
    html = out.read_text(encoding="utf-8")
    external = [src for src in re.findall(r"""\bsrc=["']([^"']*)["']""", html) if not src.startswith("data:")]
    if external:
        raise ReportError(f"{project / DOCUMENT}: the HTML still refers to {external[0]!r}; pandoc could not embed it")


def _typst_root(project: Path, images: Iterable[Path]) -> Path:
    return Path(os.path.commonpath([str(project), *(str(p) for p in images)]))


def _render_typst(project: Path, doc: _Expanded, out: Path) -> None:
    # crossref.lua writes image paths relative to a direct subfolder of the
    # project: ``out`` lies in one (the temporary folder, then _output/).
    args = ["-t", "typst", "--standalone", "--include-in-header", str(TYPST_HEADER),
            *_option_args(_format_options(project, "typst"), out.parent, "typst")]
    _run_pandoc(project, doc.text, args, out)


def _render_pdf(project: Path, doc: _Expanded, typ: Path, out: Path) -> None:
    try:
        import typst
    except ImportError as exc:
        raise ReportError("typst is missing: install the report extra (pip install 'convscope[report]') or put quarto on PATH") from exc
    root = _typst_root(project, doc.images)
    try:
        typst.compile(str(typ), output=str(out), root=str(root))
    except Exception as exc:  # typst raises its own TypstError; keep the message on one line
        raise ReportError(f"{project / DOCUMENT}: typst failed: {' '.join(str(exc).split())}") from exc
    with out.open("rb") as fh:
        if fh.read(5) != b"%PDF-":
            raise ReportError(f"{project / DOCUMENT}: typst did not write a PDF")


def _check_formats(formats: Iterable[str]) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = (formats,)
    chosen = tuple(dict.fromkeys(formats))
    unknown = [f for f in chosen if f not in FORMATS]
    if not chosen or unknown:
        raise ReportError(f"formats {list(formats)!r}: choose among {', '.join(FORMATS)}")
    return chosen


def _render_fallback(project: Path, formats: tuple[str, ...], tmp: Path) -> dict[str, Path]:
    doc = _expand(project, DOCUMENT)
    made: dict[str, Path] = {}
    if "html" in formats:
        made["html"] = tmp / "report.html"
        _render_html(project, doc, made["html"])
    if "pdf" in formats or "typst" in formats:
        typ = tmp / "report.typ"
        _render_typst(project, doc, typ)
        if "typst" in formats:
            made["typst"] = typ
        if "pdf" in formats:
            made["pdf"] = tmp / "report.pdf"
            _render_pdf(project, doc, typ, made["pdf"])
    return made


def _render_quarto(project: Path, formats: tuple[str, ...]) -> dict[str, Path]:
    """``quarto render <project> --to html|typst``; _quarto.yml must set ``output-dir: _output``."""
    quarto = shutil.which("quarto")
    if quarto is None:
        raise ReportError("renderer='quarto' but quarto is not on PATH; install Quarto or use renderer='fallback'")
    if "typst" in formats:
        raise ReportError("format 'typst' (the intermediate .typ) is only written by the fallback renderer")
    _expand(project, DOCUMENT)  # the same subset checks as the fallback
    outputs = {fmt: project / OUTPUT_DIR / f"report.{fmt}" for fmt in formats}
    started = time.time() - 1  # file systems with coarse timestamps
    try:
        for fmt in formats:
            to = {"html": "html", "pdf": "typst"}[fmt]
            cmd = [quarto, "render", str(project), "--to", to]
            if fmt == "html":
                cmd += ["-M", "embed-resources:true"]
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
    project_dir: str | os.PathLike[str],
    renderer: str = "auto",
    formats: Iterable[str] = ("html", "pdf"),
) -> dict[str, Path]:
    """Render ``<project>/report.qmd`` to ``<project>/_output/report.html`` and ``report.pdf``.

    The HTML is self-contained (images as data URIs, the stylesheet inline).
    With the fallback, nothing is written unless every requested format
    rendered: the outputs are made in a temporary folder inside the project
    and then moved into ``_output/``.

    Args:
        project_dir: The Quarto project: the folder holding ``_quarto.yml``,
            ``report.qmd`` and, when variables are used, ``_variables.yml``.
        renderer: ``"quarto"`` (``quarto render`` into ``_output/``),
            ``"fallback"`` (pandoc and Typst) or ``"auto"``: Quarto when
            ``quarto`` is on PATH, the fallback otherwise.
        formats: Any of ``"html"``, ``"pdf"`` and, with the fallback,
            ``"typst"`` (keeps the intermediate ``report.typ``; it compiles
            with ``typst compile --root <folder holding the project and its
            images> _output/report.typ``).

    Returns:
        The written files by format, e.g. ``{"html": ..., "pdf": ...}``.

    Raises:
        ReportError: For a source outside the supported subset (see
            :func:`expand`), a missing tool, or a failed pandoc/Typst/Quarto run.
    """
    project = _project(project_dir)
    chosen = _check_formats(formats)
    if renderer == "auto":
        renderer = "quarto" if shutil.which("quarto") else "fallback"
    if renderer == "quarto":
        return _render_quarto(project, chosen)
    if renderer != "fallback":
        raise ReportError(f"renderer {renderer!r}: choose 'auto', 'quarto' or 'fallback'")
    tmp = Path(tempfile.mkdtemp(prefix=".render-", dir=project))
    try:
        made = _render_fallback(project, chosen, tmp)
        output = project / OUTPUT_DIR
        output.mkdir(exist_ok=True)
        result = {}
        for fmt, path in made.items():
            os.replace(path, output / path.name)
            result[fmt] = output / path.name
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["ReportError", "SUPPORTED", "escape_markdown", "expand", "render_report"]
