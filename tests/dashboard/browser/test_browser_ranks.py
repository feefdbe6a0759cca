"""The Ranks page and the Library's run rows in real headless Chromium (runs recorded on 2 and 4 H200s).

Fixtures: ``conftest.py`` here (chromium + chromedriver; a failure under CI when missing).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from chromium import css, graph_ready, no_severe, shot, wait

pytestmark = pytest.mark.browser

RUNS = Path(__file__).resolve().parents[2] / "data" / "gpu" / "ranks"


@pytest.fixture(scope="module")
def served_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("served-ranks")
    for name in ("ddp-script-oom", "transformer-small-fsdp-n4"):
        shutil.copytree(RUNS / name, root / name)
    return root


def _js(gid: str) -> str:
    return f"const gd = document.querySelector('#{gid} .js-plotly-plot');"


def test_library_run_row_and_ranks_page(server: str, driver: Any) -> None:
    d = driver
    # GIVEN the library: each run is one row with its ranks, linking to the Ranks page
    d.get(server + "/")
    wait(lambda: css(d, "#library-table td"), what="library rows")
    text = css(d, "#library-table")[0].text
    assert "transformer-small-fsdp-n4/ (4 ranks)" in text and "ddp-script-oom/ (2 ranks)" in text
    assert "rank0.pickle.gz" not in text
    assert "rank 0: terminated, rank 1: oom" in text
    no_severe(d, "library with runs")

    # WHEN the Ranks page of the 4-rank FSDP run opens
    d.get(server + "/ranks?run=transformer-small-fsdp-n4")
    wait(lambda: graph_ready(d, "ranks-peaks"), what="peaks graph")
    wait(lambda: graph_ready(d, "ranks-timelines"), what="aligned timelines")
    # THEN one bar per rank, one line per rank on the iteration axis, and the rank table
    assert d.execute_script(_js("ranks-peaks") + "return gd._fullData[0].x.length;") == 4
    assert d.execute_script(_js("ranks-timelines") + "return gd.data.length;") == 4
    xs = d.execute_script(_js("ranks-timelines") + "const x = Array.from(gd._fullData[0].x); return [Math.min(...x), Math.max(...x)];")
    assert xs[0] >= -1 and 2.9 <= xs[1] <= 4  # 3 recorded iterations on the aligned axis
    assert "4 ranks" in css(d, "#ranks-summary")[0].text
    assert len(css(d, "#ranks-table tbody tr")) >= 4
    shot(d, "ranks")
    no_severe(d, "ranks")

    # WHEN the OOM run's Ranks page opens, the imbalance table lists what the heavier rank holds
    d.get(server + "/ranks?run=ddp-script-oom")
    wait(lambda: graph_ready(d, "ranks-peaks"), what="peaks graph (oom run)")
    wait(lambda: css(d, "#ranks-imbalance td"), what="imbalance rows")
    assert "heaviest rank 1" in css(d, "#ranks-summary")[0].text
    assert "/compare?snaps=" in css(d, "#ranks-compare")[0].get_attribute("href")
    assert "oom" in css(d, "#ranks-table")[0].text and "terminated" in css(d, "#ranks-table")[0].text
    no_severe(d, "ranks (oom run)")

    # WHEN rank 1's bar is clicked, THEN that rank's timeline opens
    d.execute_script(_js("ranks-peaks") + "gd.emit('plotly_click', {points: [{curveNumber: 0, pointNumber: 1, customdata: gd._fullData[0].customdata[1]}]});")
    wait(lambda: "/timeline?snap=" in d.current_url, what="click through to the timeline")
    wait(lambda: graph_ready(d, "timeline-graph"), what="rank 1's timeline")
    assert "ddp-script-oom/rank1.pickle.gz" in css(d, "#timeline-title")[0].text
    no_severe(d, "rank timeline")
