"""The search page of `edgedml serve` in a real browser: Debian's chromium, headless, driven by Playwright.

Upload a gallery image as the query, wait for the results, check the top hit's label and that the thumbnails
loaded; once more behind a token (taken from ?token=, sent as a header, thumbnails fetched with it). A
screenshot goes to the test's tmp folder and to /tmp/serve-screenshot.png.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

# CI sets EDGEDML_REQUIRE_BROWSER (.ci/run installs chromium): there a missing browser fails the test, never skips it.
REQUIRED = bool(os.environ.get("EDGEDML_REQUIRE_BROWSER"))


def _absent(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason}, and EDGEDML_REQUIRE_BROWSER is set", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


try:
    from playwright import sync_api as playwright_api
except ImportError:
    _absent("playwright is not installed (pip install -e '.[dev]')")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    _absent("Debian's chromium is not installed (apt-get install chromium)")

import uvicorn  # noqa: E402
from test_serve import QUERY, export_fp32  # noqa: E402

from edgedml.retrieval import build_index  # noqa: E402
from edgedml.serve import SearchService, ServeSettings  # noqa: E402
from edgedml.serve.app import create_app  # noqa: E402
from edgedml.serve.server import open_socket, url_of  # noqa: E402

SCREENSHOT_COPY = Path("/tmp/serve-screenshot.png")
TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def index_dir(trained, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve-browser")
    model = export_fp32(trained.run, root / "model.onnx")
    build_index(model, str(trained.data), root / "index")
    return root / "index"


@contextmanager
def serving(index_dir: Path, **settings) -> Iterator[str]:
    """uvicorn in a thread on a free loopback port; yields the URL."""
    app = create_app(SearchService.open(ServeSettings(index_dir, **settings).check()))
    sock = open_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def search_on_page(page, url: str, query: Path) -> None:
    page.goto(url)
    page.wait_for_selector("#summary:has-text('60 images')", timeout=TIMEOUT_MS)
    page.set_input_files("#file", str(query))
    page.wait_for_selector("#results[data-done='true'] .hit", timeout=TIMEOUT_MS)
    # every thumbnail fetched and decoded
    page.wait_for_function(
        "[...document.querySelectorAll('.hit img')].every(i => i.complete && i.naturalWidth > 0)", timeout=TIMEOUT_MS
    )


def test_page_finds_the_query_and_shows_its_gallery_thumbnails(browser, index_dir, trained, tmp_path):
    query = trained.data / QUERY[0] / QUERY[1]
    with serving(index_dir, top_k=8) as url:
        page = browser.new_page(viewport={"width": 1100, "height": 760})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        search_on_page(page, url, query)
        hits = page.locator(".hit")
        assert hits.count() == 8
        assert hits.nth(0).locator(".label").inner_text() == "class4"
        assert hits.nth(0).locator(".name").inner_text() == "class4/3.png"
        assert float(hits.nth(0).locator(".score").inner_text()) == pytest.approx(1.0, abs=1e-3)
        assert "nearest of 60 images" in page.locator("#status").inner_text()
        screenshot = tmp_path / "serve.png"
        page.screenshot(path=str(screenshot), full_page=True)
        shutil.copy(screenshot, SCREENSHOT_COPY)
        bad = tmp_path / "notes.png"
        bad.write_text("not an image")
        page.set_input_files("#file", str(bad))
        page.wait_for_selector("#status.error", timeout=TIMEOUT_MS)
        assert "upload notes.png: not an image format" in page.locator("#status").inner_text()
        page.close()
    assert not errors, errors


def test_page_behind_a_token(browser, index_dir, trained):
    query = trained.data / "class1" / "0.png"
    with serving(index_dir, token="page-token") as url:
        page = browser.new_page()
        assert page.goto(url).status == 401  # without it, not even the page
        search_on_page(page, url + "?token=page-token", query)
        assert "token" not in page.url  # dropped from the address bar, kept for the tab
        assert page.locator(".hit").nth(0).locator(".label").inner_text() == "class1"
        page.close()
