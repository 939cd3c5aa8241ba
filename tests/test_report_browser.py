"""The HTML report in a real browser (headless Chromium): side table of contents, figure lightbox, no-JS reading.

Chromium is Debian's ``chromium`` package (.ci/run installs it). A probe script is appended to a copy of the page;
it clicks like a reader would and writes what it saw into the DOM, which ``--dump-dom`` prints.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from test_report_render import _project

from convscope.report.render import render_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None and os.environ.get("CI") != "true",
    reason="headless Chromium is not installed (apt-get install chromium)",
)

PROBE = """<script>
window.addEventListener("load", () => {
  const img = document.querySelector("figure img"), box = document.querySelector(".lightbox");
  const toc = document.getElementById("TOC"), list = toc.querySelector("ul");
  const shown = (el) => el.getClientRects().length > 0 && getComputedStyle(el).visibility !== "hidden";
  const r = {toc: getComputedStyle(toc).position, tocListShown: shown(list), boxBefore: shown(box)};
  document.querySelector(".toc-toggle").click();
  r.tocListAfterToggle = shown(list);
  img.click();
  const big = box.querySelector("img").getBoundingClientRect();
  r.boxAfterClick = shown(box);
  r.sameImage = box.querySelector("img").src === img.src;
  r.covers = JSON.stringify(box.getBoundingClientRect()) === JSON.stringify(new DOMRect(0, 0, innerWidth, innerHeight));
  r.enlargedWidth = big.width;
  document.dispatchEvent(new KeyboardEvent("keydown", {key: "Escape"}));
  r.boxAfterEscape = shown(box);
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify(r);
  document.body.append(out);
});
</script>"""


def chromium(*args: str) -> str:
    command = [CHROMIUM or "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout


def probe(page: Path, width: int) -> dict:
    probed = page.with_name(f"probe-{width}.html")
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    dom = chromium(f"--window-size={width},900", "--virtual-time-budget=5000", "--dump-dom", probed.as_uri())
    return json.loads(re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S).group(1).replace("&quot;", '"'))


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    project = _project(tmp_path_factory.mktemp("browser"))
    return render_report(project, renderer="fallback", formats=("html",))["html"]


def test_wide_screen_side_toc_and_lightbox(page):
    seen = probe(page, 1400)
    assert seen["toc"] == "fixed" and seen["tocListShown"]  # the side column, always open
    assert not seen["boxBefore"] and seen["boxAfterClick"] and seen["sameImage"] and seen["covers"]
    assert seen["enlargedWidth"] == 120  # the figure's full size (120 px), not its column width
    assert not seen["boxAfterEscape"]


def test_narrow_screen_folds_the_toc(page):
    seen = probe(page, 400)
    assert seen["toc"] == "static" and not seen["tocListShown"] and seen["tocListAfterToggle"]
    assert seen["boxAfterClick"] and not seen["boxAfterEscape"]


def test_screenshots_and_figures_without_javascript(page, tmp_path):
    # Headless Chromium ignores its switches that turn JavaScript off, so the page's script is taken out instead.
    plain = tmp_path / "no-script.html"
    plain.write_text(re.sub(r"<script>.*?</script>", "", page.read_text(), flags=re.S))
    assert "<script" in page.read_text() and "<script" not in plain.read_text()
    for width in (1400, 400):
        shot = tmp_path / f"page-{width}.png"
        chromium(f"--window-size={width},1600", f"--screenshot={shot}", plain.as_uri())
        with Image.open(shot) as image:
            assert image.width == width
            # The test figures are flat red and blue: without JavaScript they are still drawn on the page.
            red = dict((colour, n) for n, colour in image.convert("RGB").getcolors(1 << 24)).get((200, 40, 40), 0)
            assert red > 1000, width
