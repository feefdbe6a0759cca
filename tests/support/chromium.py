"""Headless Chromium for the browser tests: one way to start it, serve the app, and look at a page.

Needs chromium + chromedriver (``/usr/bin/chromedriver`` or ``$CHROMEDRIVER``). :func:`require`
skips when they are missing, except under CI (``CI`` set), where that is a failure.
``MEMPROF_SCREENSHOTS=1`` makes :func:`shot` save ``docs/<name>.png``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
DRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def missing() -> str | None:
    """Why no browser test can run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed"
    if not Path(DRIVER).exists():
        return f"{DRIVER} not found"
    if not any(shutil.which(b) for b in BROWSERS):
        return "no chromium binary"
    return None


def require() -> None:
    why = missing()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"browser test under CI: {why}")
        pytest.skip(why)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(root: Path) -> Iterator[str]:
    """``memprof serve``'s app over ``root`` in a thread; yields its URL."""
    from werkzeug.serving import make_server

    from memprof.dashboard import create_app

    app = create_app(root)
    srv = make_server("127.0.0.1", free_port(), app.server, threaded=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_port}"
    finally:
        srv.shutdown()


def chrome(profile: Path, size: str = "1400,1000") -> Any:
    """A headless Chromium that keeps the console log (for :func:`no_severe`)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync", f"--window-size={size}"):
        opts.add_argument(a)
    opts.add_argument(f"--user-data-dir={profile}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(DRIVER), options=opts)
    d.set_page_load_timeout(30)
    return d


def wait(pred: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    end = time.time() + timeout
    last: Exception | None = None
    while time.time() < end:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # element not there yet
            last = e
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} ({last})")


def css(d: Any, sel: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(d.find_elements(By.CSS_SELECTOR, sel))


def shot(d: Any, name: str) -> None:
    if os.environ.get("MEMPROF_SCREENSHOTS") == "1":
        time.sleep(0.8)
        (REPO / "docs").mkdir(exist_ok=True)
        d.save_screenshot(str(REPO / "docs" / f"{name}.png"))


def no_severe(d: Any, page: str) -> None:
    bad = [e for e in d.get_log("browser") if e.get("level") == "SEVERE"]
    assert not bad, f"{page}: browser console errors: {bad}"


def graph_ready(d: Any, gid: str) -> bool:
    return bool(d.execute_script(
        "const g = document.querySelector('#' + arguments[0] + ' .js-plotly-plot'); return !!(g && g.data && g.data.length);", gid))
