"""The built site in a real browser: served on localhost, opened in headless Chromium.

For every page: no request leaves localhost, no console error or uncaught exception is
logged, and MathJax finished typesetting with no error box; on the derivation pages the
math rendered (MathJax output present) and no raw TeX is left in the text outside code
(``$…$``, ``\\(…\\)``, ``\\frac``, ``\\begin``). One page's screenshot is saved.

    python docs/browser_check.py docs/_build/html --screenshot docs/_build/derivation.png

Needs the ``playwright`` package (the ``docs`` extra) and a Chromium: Debian's
``chromium`` package, or the path in ``$FUNCPROP_CHROMIUM``. Exits 1 with one line per
problem, 0 when every page passes.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import pathlib
import re
import shutil
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

MATH_PAGES = "derivations/"  # pages that must carry rendered math
SCREENSHOT_PAGE = "derivations/seed-network.html"
# raw TeX that MathJax should have replaced, searched in the text outside code; $…$ as
# pandoc reads it: no space inside either dollar, no digit right after the closing one
RAW_TEX = re.compile(r"\\frac|\\begin\{|\\\(|\\\[|\$\$|(?<![\w$])\$[^$\s](?:[^$\n]*[^$\s])?\$(?!\d)")
# the text of the article with code, MathJax output and MathJax's assistive copies taken out
_TEXT_OUTSIDE_CODE = """() => {
  const main = document.querySelector('article') || document.body;
  const copy = main.cloneNode(true);
  copy.querySelectorAll('pre, code, mjx-container, script, style, .highlight').forEach(e => e.remove());
  return copy.innerText;
}"""
_TYPESET = "() => window.MathJax && MathJax.startup ? MathJax.startup.promise.then(() => true) : true"


def chromium_path() -> str | None:
    """The Chromium to drive: ``$FUNCPROP_CHROMIUM``, else ``chromium`` on the PATH."""
    return os.environ.get("FUNCPROP_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@contextmanager
def serve(site: pathlib.Path) -> Iterator[str]:
    """Serve ``site`` on 127.0.0.1 at a free port; yields the base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # the check reports; the server stays silent
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def pages_of(site: pathlib.Path) -> list[str]:
    """Every HTML page of the site, relative to it, the generated source pages left out."""
    pages = sorted(str(p.relative_to(site)) for p in site.rglob("*.html"))
    return [p for p in pages if not p.startswith(("_modules/", "_sources/"))]


def check_site(site, screenshot=None, pages=None) -> list[str]:
    """Open each page of the built site ``site`` in headless Chromium; returns the
    problems found, one line each (empty when every page passes)."""
    from playwright.sync_api import sync_playwright

    site = pathlib.Path(site)
    if not (site / "index.html").is_file():
        raise FileNotFoundError(f"browser_check: {site} holds no index.html; build the site first")
    executable = chromium_path()
    if executable is None:
        raise FileNotFoundError(
            "browser_check: no Chromium found; install Debian's chromium package "
            "(apt-get install chromium) or set FUNCPROP_CHROMIUM to a Chromium binary"
        )
    pages = pages_of(site) if pages is None else pages
    problems: list[str] = []
    with serve(site) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        current = {"name": ""}

        def outside(request):
            url = request.url
            if not url.startswith((base, "data:", "blob:", "about:")):
                problems.append(f"{current['name']}: a request left localhost: {url}")

        page.on("request", outside)
        page.on(
            "response",
            lambda r: r.status >= 400 and problems.append(f"{current['name']}: HTTP {r.status} for {r.url}"),
        )
        page.on(
            "console",
            lambda m: m.type == "error" and problems.append(f"{current['name']}: console error: {m.text}"),
        )
        page.on("pageerror", lambda e: problems.append(f"{current['name']}: uncaught exception: {e}"))
        for name in pages:
            current["name"] = name
            response = page.goto(base + name, wait_until="load")
            if response is None or response.status != 200:
                problems.append(f"{name}: HTTP {response.status if response else 'no response'}")
                continue
            page.evaluate(_TYPESET)
            if page.locator("mjx-merror").count():
                problems.append(f"{name}: MathJax could not typeset: {page.locator('mjx-merror').first.inner_text()}")
            if name.startswith(MATH_PAGES) and not name.endswith("index.html"):
                if page.locator("mjx-container").count() == 0:
                    problems.append(f"{name}: no rendered math (MathJax did not run)")
                raw = RAW_TEX.search(page.evaluate(_TEXT_OUTSIDE_CODE))
                if raw:
                    problems.append(f"{name}: raw TeX left in the text: {raw.group(0)!r}")
            if screenshot is not None and name == SCREENSHOT_PAGE:
                page.screenshot(path=str(screenshot), full_page=False)
        browser.close()
    if screenshot is not None and SCREENSHOT_PAGE in pages and not pathlib.Path(screenshot).is_file():
        problems.append(f"{SCREENSHOT_PAGE}: no screenshot written to {screenshot}")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", type=pathlib.Path, help="the built site (docs/_build/html)")
    parser.add_argument("--screenshot", type=pathlib.Path, help=f"where to save {SCREENSHOT_PAGE} as PNG")
    args = parser.parse_args(argv)
    try:
        problems = check_site(args.site, args.screenshot)
    except FileNotFoundError as e:
        print(e, file=sys.stderr)
        return 1
    for line in problems:
        print(line, file=sys.stderr)
    print(f"browser_check: {len(pages_of(args.site))} pages, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
