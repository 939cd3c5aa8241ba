#!/usr/bin/env sh
# The README's pictures of the HTML report, taken by headless Chromium after a build (snakemake --cores all):
#   sh docs/screenshots.sh
# (the top of the page: headless Chromium draws a blank picture of this page scrolled to a section)
set -eu
page="file://$(pwd)/report/_output/report.html"
shoot() { chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --virtual-time-budget=10000 "$@" 2>/dev/null; }
shoot --window-size=1400,900 --screenshot=docs/report-html-wide.png "$page"
shoot --window-size=400,860 --screenshot=docs/report-html-narrow.png "$page"
