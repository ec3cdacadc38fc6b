"""Open a local page in headless Chromium for tests: Debian's ``/usr/bin/chromium`` driven by playwright.

    from browser import open_page

    with open_page(run_dir / "report.html") as page:                 # file:// URL
        page.wait_for("() => document.querySelector('model-viewer')?.loaded === true")
        assert page.problems() == []                                 # console errors, failed requests
        page.screenshot(tmp_path / "report.png")

``serve=True`` serves the page's folder from a tiny http.server on 127.0.0.1 (an ephemeral port) instead:
a page opened from disk has an opaque origin, and Chromium refuses it ES-module scripts and ``fetch()`` of
other file:// URLs, so pages that load files that way need it. playwright's own browser download is not
used (it needs the network): the browser is ``$DREAMFIELD_CHROMIUM`` or ``/usr/bin/chromium`` (``apt-get
install chromium``; ``make`` does it as root). Without playwright or Chromium the test is skipped with
the reason, and fails instead when the environment variable ``CI`` is set.
"""

from __future__ import annotations

import functools
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

CHROMIUM_ENV = "DREAMFIELD_CHROMIUM"
DEFAULT_CHROMIUM = "/usr/bin/chromium"
# --no-sandbox: Chromium's sandbox refuses to start as root (CI containers, this machine).
# SwiftShader (software GL through ANGLE): WebGL for model-viewer on machines without a GPU; Chromium
# no longer falls back to it on its own. Autoplay: the report's muted videos start without a click.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--autoplay-policy=no-user-gesture-required",
)


def _unavailable(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{message}; in CI it must be there (make test installs it: apt-get install chromium, pip install playwright)")
    pytest.skip(message)


def require_browser() -> str:
    """The Chromium executable, after checking that it and playwright are there (else skip, or fail in CI)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _unavailable("playwright is not installed (pip install playwright, or pip install -e '.[test]')")
    exe = os.environ.get(CHROMIUM_ENV) or DEFAULT_CHROMIUM
    if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
        _unavailable(f"Chromium not found at {exe} (apt-get install chromium, or set {CHROMIUM_ENV})")
    return exe


@dataclass
class BrowserPage:
    """A loaded page and what went wrong while it loaded; ``page`` is playwright's Page for anything else."""

    page: Any
    url: str
    console_errors: list[str] = field(default_factory=list)  # console.error messages and uncaught exceptions
    failed_requests: list[str] = field(default_factory=list)  # network failures and http status >= 400
    requests: list[str] = field(default_factory=list)  # every URL the page asked for

    def problems(self) -> list[str]:
        return self.console_errors + self.failed_requests

    def evaluate(self, js: str, arg: Any = None) -> Any:
        """Evaluate a JS expression or function (``arg`` is passed to a function)."""
        return self.page.evaluate(js, arg)

    def wait_for(self, js: str, timeout_s: float = 30.0, arg: Any = None) -> Any:
        """Wait until the JS expression or function is truthy; on timeout an AssertionError naming it and the
        page's problems so far."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        try:
            return self.page.wait_for_function(js, arg=arg, timeout=timeout_s * 1000).json_value()
        except PlaywrightTimeout:
            raise AssertionError(f"{self.url}: timed out after {timeout_s} s waiting for {js}; problems: {self.problems()}") from None

    def screenshot(self, path: str | Path, full_page: bool = True) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path), full_page=full_page)
        return path


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # keep the test output clean
        pass


@contextmanager
def serve_folder(folder: str | Path) -> Iterator[str]:
    """Serve ``folder`` over http on 127.0.0.1 (a free port chosen by the OS); yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _watch(page, out: BrowserPage) -> None:
    page.on("console", lambda m: out.console_errors.append(f"console.error: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda exc: out.console_errors.append(f"uncaught: {exc}"))
    page.on("request", lambda r: out.requests.append(r.url))
    page.on("requestfailed", lambda r: out.failed_requests.append(f"{r.url}: {r.failure}"))
    page.on("response", lambda r: out.failed_requests.append(f"{r.url}: http {r.status}") if r.status >= 400 else None)


@contextmanager
def open_page(
    path: str | Path, serve: bool = False, viewport: tuple[int, int] = (1280, 900), wait_until: str = "load",
    timeout_s: float = 30.0,
) -> Iterator[BrowserPage]:
    """Open a local HTML file in headless Chromium, from disk (file://) or served over http (``serve=True``).

    Yields a BrowserPage once the page's ``load`` event fired; the browser (and server) close on exit.
    """
    exe = require_browser()
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no page at {path}")
    with _maybe_serve(path.parent if serve else None) as base, sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(executable_path=exe, headless=True, args=list(CHROMIUM_ARGS))
        except PlaywrightError as exc:
            _unavailable(f"Chromium at {exe} did not start: {str(exc).splitlines()[0]}")
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            url = f"{base}/{path.name}" if base else path.as_uri()
            out = BrowserPage(page, url)
            _watch(page, out)
            page.goto(url, wait_until=wait_until, timeout=timeout_s * 1000)
            yield out
        finally:
            browser.close()


@contextmanager
def _maybe_serve(folder: Optional[Path]) -> Iterator[Optional[str]]:
    """serve_folder(folder) when a folder is given, else nothing (yields None)."""
    if folder is None:
        yield None
    else:
        with serve_folder(folder) as base:
            yield base
