"""The built book in a real browser: headless Chromium renders the index, the results page and a run page;
every image must load and every internal link must resolve.

Needs a Chromium on the machine (`apt-get install chromium`; optional) and Playwright (`make test` installs
it); skips with the reason otherwise. By default it checks the tiny book that the test session builds; with
``WBC_BOOK_HTML=_build/html`` it checks that folder instead (for example the book of a finished
``make study``), and with ``WBC_SCREENSHOTS=DIR`` it saves a 1400-pixel-wide screenshot of each page there.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

PAGES = ("index.html", "book/generated/results.html", "book/generated/runs/wbc10-scratch-mask-s0.html",
         "book/generated/walkthrough.html")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def chromium() -> str | None:
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


@pytest.fixture
def site(request) -> Path:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("Playwright is not installed (it comes with `pip install -e '.[dev]'`)")
    if chromium() is None:
        pytest.skip("no headless Chromium on this machine (optional setup: `apt-get install chromium`)")
    if os.environ.get("WBC_BOOK_HTML"):
        html = Path(os.environ["WBC_BOOK_HTML"]).resolve()
        if not (html / "index.html").is_file():
            pytest.skip(f"WBC_BOOK_HTML={html} holds no built book")
        return html
    _, book, proc = request.getfixturevalue("tiny_book")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return book / "_build" / "html"


def internal_target(page: Path, href: str, html: Path) -> tuple[Path, str] | None:
    """The file and fragment an internal link points to; None for an external or a non-file link."""
    parts = urlsplit(href)
    if parts.scheme in ("http", "https", "mailto", "javascript", "data") or parts.netloc:
        return None
    if parts.scheme == "file":
        target = Path(unquote(parts.path))
    elif parts.path:
        target = (page.parent / unquote(parts.path)).resolve()
    else:
        target = page
    if target.is_dir():
        target = target / "index.html"
    return target, parts.fragment


@pytest.mark.slow
def test_pages_render_with_every_image_and_internal_link(site):
    from playwright.sync_api import sync_playwright

    shots = os.environ.get("WBC_SCREENSHOTS")
    missing = [p for p in PAGES if not (site / p).is_file()]
    assert not missing, f"pages missing from {site}: {', '.join(missing)}"
    pages = list(PAGES)
    problems = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), headless=True, args=["--no-sandbox"])
        view = browser.new_page(viewport={"width": 1400, "height": 1000})
        for name in pages:
            target = site / name
            refresh = re.search(r'http-equiv="Refresh" content="0; url=([^"]+)"', target.read_text(errors="replace"))
            if refresh:  # the book's index.html only redirects to its first page: check that the target exists
                target = (target.parent / refresh.group(1)).resolve()
                assert target.is_file(), f"{name} redirects to a missing {target}"
            view.goto(target.as_uri(), wait_until="networkidle")  # MathJax and images settled
            page_file = target
            images = view.eval_on_selector_all(
                "img", "els => els.map(e => [e.getAttribute('src'), e.complete && e.naturalWidth > 0])")
            problems += [f"{name}: image {src} did not load" for src, ok in images if not ok]
            hrefs = view.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))")
            for href in hrefs:
                target = internal_target(page_file, href, site)
                if target is None:
                    continue
                path, fragment = target
                if not path.is_file():
                    problems.append(f"{name}: link {href} -> missing {path}")
                elif fragment and path.suffix == ".html" and f'id="{fragment}"' not in path.read_text(errors="replace"):
                    problems.append(f"{name}: link {href} -> no #{fragment} in {path.name}")
            if name != "index.html":
                assert images, f"{name} shows no figure"
            if shots:
                Path(shots).mkdir(parents=True, exist_ok=True)
                view.screenshot(path=str(Path(shots) / (name.replace("/", "_").removesuffix(".html") + ".png")),
                                full_page=True, clip={"x": 0, "y": 0, "width": 1400, "height": 2600})
        browser.close()
    assert not problems, "\n".join(problems[:30])
