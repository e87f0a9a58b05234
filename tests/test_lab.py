"""`make lab` as a user meets it: the command starts as root, and the walkthrough opened in JupyterLab shows its
links to the book's pages as links that open, not as the raw text of a role.

The JupyterLab test needs a Chromium on the machine (`apt-get install chromium`; optional) and Playwright
(`make test` installs it); it skips with the reason otherwise. It serves a copy of the notebook and the pages
it links to, with the options of the Makefile's `lab` target; with ``WBC_SCREENSHOTS=DIR`` it saves a
screenshot of the walkthrough there.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_browser import chromium

ROOT = Path(__file__).resolve().parents[1]


def lab_recipe() -> str:
    """The Makefile's `jupyter lab` command line, as `make -n lab` prints it for this user."""
    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    # a venv path that exists nowhere: make prints the install steps it would run and the lab command, runs none
    p = subprocess.run(["make", "-n", "lab", "VENV=/nonexistent/venv"], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return next(line for line in p.stdout.splitlines() if "/jupyter lab " in line)


def test_make_lab_passes_allow_root_exactly_when_run_as_root():
    line = lab_recipe()
    assert ("--allow-root" in line.split()) == (os.geteuid() == 0), line


def test_the_walkthrough_links_to_book_pages_in_plain_markdown_from_notebooks_and_from_the_book():
    """Plain Markdown links (no MyST role, which JupyterLab shows as raw text) to files that exist from
    notebooks/, rebased for the generated page to files that exist from book/generated/."""
    import nbformat

    from wbclib.study import book

    nb = nbformat.read(ROOT / "notebooks" / "walkthrough.ipynb", as_version=4)
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert not re.search(r"\{[a-z:-]+\}`", markdown), "a MyST role in the walkthrough's Markdown"
    targets = [t for t in re.findall(r"\]\(([^)#\s]+)", markdown) if "://" not in t]
    assert {"../book/method.md", "../book/data.md"} <= set(targets)
    assert all((ROOT / "notebooks" / t).is_file() for t in targets)
    page = ROOT / "book" / "generated" / "walkthrough.ipynb"
    rebased = "\n".join(c.source for c in book.rebase_links(nb, page, ROOT).cells if c.cell_type == "markdown")
    moved = [t for t in re.findall(r"\]\(([^)#\s]+)", rebased) if "://" not in t]
    assert {"../method.md", "../data.md"} <= set(moved)
    assert all(Path(os.path.normpath(page.parent / t)).is_file() for t in moved)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server with the Makefile's options on a copy of the walkthrough and the book's pages; its
    own config, runtime and workspace folders. Yields (base URL, token)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("Playwright is not installed (it comes with `pip install -e '.[dev]'`)")
    if chromium() is None:
        pytest.skip("no headless Chromium on this machine (optional setup: `apt-get install chromium`)")
    served = tmp_path / "checkout"
    (served / "notebooks").mkdir(parents=True)
    shutil.copy(ROOT / "notebooks" / "walkthrough.ipynb", served / "notebooks")
    shutil.copytree(ROOT / "book", served / "book", ignore=shutil.ignore_patterns("generated"))
    config = tmp_path / "jupyter-config"
    (config / "labconfig").mkdir(parents=True)  # no "get notified about Jupyter news?" pop-up over the page
    (config / "labconfig" / "page_config.json").write_text(
        '{"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": true}}')
    options = lab_recipe().split("jupyter lab", 1)[1].split()
    port, token = free_port(), "wbc-test"
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(config), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    server = subprocess.Popen([sys.executable, "-m", "jupyterlab", *options, "--no-browser", f"--port={port}",
                               f"--ServerApp.token={token}", f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}"],
                              cwd=served, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5)
                break
            except OSError:
                assert server.poll() is None, f"jupyter lab exited:\n{server.stdout.read()[-3000:]}"
                assert time.time() < deadline, "jupyter lab did not answer within 180 s"
                time.sleep(0.5)
        yield base, token
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.mark.slow
def test_the_walkthrough_in_jupyterlab_shows_links_to_the_book_pages_that_open(lab):
    from playwright.sync_api import sync_playwright

    base, token = lab
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                                           "--disable-background-networking", "--disable-component-update",
                                           "--disable-sync"])
        view = browser.new_page(viewport={"width": 1400, "height": 1000})
        view.goto(f"{base}/?token={token}", timeout=120_000)  # the page `make lab` opens: the notebooks folder
        view.wait_for_selector(".jp-DirListing-item[title^='Name: walkthrough.ipynb']", timeout=120_000)
        assert "/lab/tree/notebooks" in view.url, view.url
        view.goto(f"{base}/lab/tree/notebooks/walkthrough.ipynb?token={token}&reset", timeout=120_000)
        view.wait_for_selector(".jp-MarkdownOutput h1", timeout=120_000)
        first = view.locator(".jp-MarkdownOutput").first
        text = first.inner_text()
        links = view.eval_on_selector_all(
            ".jp-MarkdownOutput a", "els => els.map(e => [e.textContent.trim(), e.getAttribute('href')])")
        if os.environ.get("WBC_SCREENSHOTS"):
            Path(os.environ["WBC_SCREENSHOTS"]).mkdir(parents=True, exist_ok=True)
            view.screenshot(path=str(Path(os.environ["WBC_SCREENSHOTS"]) / "jupyterlab-walkthrough.png"))
        targets = {name: href for name, href in links if name in ("the method", "the data page")}
        opened = {name: view.request.get(href).status for name, href in targets.items()}
        browser.close()
    assert "{doc}" not in text and "`" not in text, text[:1500]  # no role left as raw text
    assert set(targets) == {"the method", "the data page"}, links
    assert "/files/book/method.md" in targets["the method"] and "/files/book/data.md" in targets["the data page"]
    assert opened == {"the method": 200, "the data page": 200}
