"""The Ranks page and the Library's run rows in real headless Chromium (runs recorded on 2 and 4 H200s).

Same requirements as tests/test_browser.py (chromium + chromedriver; a failure under CI when missing).
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from test_browser import DRIVER, _css, _free_port, _graph_ready, _missing, _no_severe, _shot, _wait

pytestmark = pytest.mark.browser

RUNS = Path(__file__).resolve().parent / "data" / "gpu" / "ranks"


@pytest.fixture(scope="module")
def ranks_server(tmp_path_factory) -> Iterator[str]:
    why = _missing()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"browser test under CI: {why}")
        pytest.skip(why)
    from werkzeug.serving import make_server

    from memprof.dashboard import create_app

    root = tmp_path_factory.mktemp("served-ranks")
    for name in ("ddp-script-oom", "transformer-small-fsdp-n4"):
        shutil.copytree(RUNS / name, root / name)
    app = create_app(root)
    srv = make_server("127.0.0.1", _free_port(), app.server, threaded=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.port}"
    srv.shutdown()


@pytest.fixture(scope="module")
def ranks_driver(ranks_server: str, tmp_path_factory) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1400,1000"):
        opts.add_argument(a)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chrome-profile-ranks')}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(DRIVER), options=opts)
    d.set_page_load_timeout(30)
    yield d
    d.quit()


def _js(gid: str) -> str:
    return f"const gd = document.querySelector('#{gid} .js-plotly-plot');"


def test_library_run_row_and_ranks_page(ranks_server: str, ranks_driver: Any) -> None:
    d = ranks_driver
    # GIVEN the library: each run is one row with its ranks, linking to the Ranks page
    d.get(ranks_server + "/")
    _wait(lambda: _css(d, "#library-table td"), what="library rows")
    text = _css(d, "#library-table")[0].text
    assert "transformer-small-fsdp-n4/ (4 ranks)" in text and "ddp-script-oom/ (2 ranks)" in text
    assert "rank0.pickle.gz" not in text
    assert "rank 0: terminated, rank 1: oom" in text
    _no_severe(d, "library with runs")

    # WHEN the Ranks page of the 4-rank FSDP run opens
    d.get(ranks_server + "/ranks?run=transformer-small-fsdp-n4")
    _wait(lambda: _graph_ready(d, "ranks-peaks"), what="peaks graph")
    _wait(lambda: _graph_ready(d, "ranks-timelines"), what="aligned timelines")
    # THEN one bar per rank, one line per rank on the iteration axis, and the rank table
    assert d.execute_script(_js("ranks-peaks") + "return gd._fullData[0].x.length;") == 4
    assert d.execute_script(_js("ranks-timelines") + "return gd.data.length;") == 4
    xs = d.execute_script(_js("ranks-timelines") + "const x = Array.from(gd._fullData[0].x); return [Math.min(...x), Math.max(...x)];")
    assert xs[0] >= -1 and 2.9 <= xs[1] <= 4  # 3 recorded iterations on the aligned axis
    assert "4 ranks" in _css(d, "#ranks-summary")[0].text
    assert len(_css(d, "#ranks-table tbody tr")) >= 4
    _shot(d, "ranks")
    _no_severe(d, "ranks")

    # WHEN the OOM run's Ranks page opens, the imbalance table lists what the heavier rank holds
    d.get(ranks_server + "/ranks?run=ddp-script-oom")
    _wait(lambda: _graph_ready(d, "ranks-peaks"), what="peaks graph (oom run)")
    _wait(lambda: _css(d, "#ranks-imbalance td"), what="imbalance rows")
    assert "heaviest rank 1" in _css(d, "#ranks-summary")[0].text
    assert "/compare?snaps=" in _css(d, "#ranks-compare")[0].get_attribute("href")
    assert "oom" in _css(d, "#ranks-table")[0].text and "terminated" in _css(d, "#ranks-table")[0].text
    _no_severe(d, "ranks (oom run)")

    # WHEN rank 1's bar is clicked, THEN that rank's timeline opens
    d.execute_script(_js("ranks-peaks") + "gd.emit('plotly_click', {points: [{curveNumber: 0, pointNumber: 1, customdata: gd._fullData[0].customdata[1]}]});")
    _wait(lambda: "/timeline?snap=" in d.current_url, what="click through to the timeline")
    _wait(lambda: _graph_ready(d, "timeline-graph"), what="rank 1's timeline")
    assert "ddp-script-oom/rank1.pickle.gz" in _css(d, "#timeline-title")[0].text
    _no_severe(d, "rank timeline")
