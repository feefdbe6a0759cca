"""The dashboard in real headless Chromium: every page renders, zoom re-aggregates, no console errors.

Fixtures and helpers: ``conftest.py`` here and ``tests/support/chromium.py`` (skip and CI rules there).
``MEMPROF_SCREENSHOTS=1`` saves ``docs/<page>.png``.
"""

from __future__ import annotations

from typing import Any

import pytest
from chromium import css, graph_ready, no_severe, shot, wait

pytestmark = pytest.mark.browser

def test_pages(server: str, driver: Any) -> None:
    d = driver
    d.get(server + "/")
    wait(lambda: css(d, "#library-table td"), what="library table rows")
    assert "transformer-small-train-eager-bf16" in d.page_source
    wait(lambda: graph_ready(d, "library-preview"), what="library preview graph")
    shot(d, "library")
    no_severe(d, "library")

    d.get(server + "/timeline?snap=h100/transformer-small-train-eager-bf16.pickle.gz")
    wait(lambda: graph_ready(d, "timeline-graph"), what="timeline graph")
    assert "peak allocated" in css(d, "#timeline-summary")[0].text
    shot(d, "timeline")
    js_gd = "const gd = document.querySelector('#timeline-graph .js-plotly-plot');"
    before = d.execute_script(js_gd + "return [gd.data.length, gd.data.map(t => t.x ? t.x.length : 0).reduce((a,b)=>a+b,0), gd.layout.xaxis.range];")
    x0, x1 = before[2]
    a, b = x0 + (x1 - x0) * 0.40, x0 + (x1 - x0) * 0.45
    d.execute_script(js_gd + "window.__memprofBefore = JSON.stringify(gd.data.map(t => [t.x && Array.from(t.x).slice(0, 3), t.x && t.x.length]));"
                     "Plotly.relayout(gd, {'xaxis.range': [arguments[0], arguments[1]]});", a, b)
    wait(lambda: d.execute_script(js_gd + "return JSON.stringify(gd.data.map(t => [t.x && Array.from(t.x).slice(0, 3), t.x && t.x.length])) !== window.__memprofBefore;"),
          what="zoomed trace data from the server")
    after = d.execute_script(js_gd + "return [gd.layout.xaxis.range, gd.data.map(t => t.x ? t.x.length : 0)];")
    assert abs(after[0][0] - a) < 1e-6 * max(1.0, abs(a)) and abs(after[0][1] - b) < 1e-6 * max(1.0, abs(b))  # the zoom survives the patch
    assert max(after[1]) <= 5000
    shot(d, "timeline-zoomed")
    no_severe(d, "timeline")

    d.get(server + "/allocations?snap=h100/transformer-small-train-eager-bf16.pickle.gz")
    wait(lambda: css(d, "#allocations-table td"), what="allocations rows")
    wait(lambda: "alive at" in css(d, "#allocations-alive-summary")[0].text, what="alive summary")
    shot(d, "allocations")
    no_severe(d, "allocations")

    d.get(server + "/explain?snap=h100/transformer-small-train-eager-bf16.pickle.gz")
    v = wait(lambda: css(d, "#explain-verdict"), what="verdict")
    assert v[0].text.strip()
    wait(lambda: graph_ready(d, "explain-categories"), what="explain categories graph")
    shot(d, "explain")
    no_severe(d, "explain")

    d.get(server + "/compare?snaps=h100/transformer-small-train-eager-bf16.pickle.gz,h100/transformer-small-train-compiled-bf16.pickle.gz")
    wait(lambda: graph_ready(d, "compare-graph"), what="compare graph")
    assert d.execute_script("return document.querySelector('#compare-graph .js-plotly-plot').data.length;") == 2
    wait(lambda: css(d, "#compare-categories td"), what="compare diff table")
    shot(d, "compare")
    no_severe(d, "compare")

    for i, name in enumerate(("sweeps-attention", "sweeps-transformer")):
        d.get(server + f"/sweeps?sweep={i}")
        wait(lambda: graph_ready(d, "sweeps-forward"), what=f"{name} forward graph")
        wait(lambda: graph_ready(d, "sweeps-speedup"), what=f"{name} speedup graph")
        if name == "sweeps-attention":
            assert "OOM" in d.execute_script("return JSON.stringify(document.querySelector('#sweeps-forward .js-plotly-plot').data.map(t => t.text || ''));")
        shot(d, name)
        no_severe(d, name)


def test_allocations_filter_by_text_and_units(server: str, driver: Any) -> None:
    """Typing in the table's filter cells filters on the server (issue 14: text filters did nothing)."""
    from selenium.webdriver.common.keys import Keys

    from memprof.dashboard.state import library

    d = driver
    m = library().model(library().get("h100/transformer-small-train-eager-bf16.pickle.gz").id)
    n_all, n_act = len(m.allocs), int((m.allocs["category"].str.contains("activation", regex=False)).sum())
    n_big = int(((m.allocs["category"].str.contains("activation", regex=False)) & (m.allocs["size"] > 50 * 2**20)).sum())
    d.get(server + "/allocations?snap=h100/transformer-small-train-eager-bf16.pickle.gz")
    wait(lambda: css(d, "#allocations-table td"), what="allocations rows")
    wait(lambda: f"{n_all:,} of {n_all:,}" in css(d, "#allocations-count")[0].text, what="unfiltered count")

    def cell(col: str) -> Any:
        return css(d, f'#allocations-table th.dash-filter[data-dash-column="{col}"] input')[0]

    cell("category").send_keys("activation", Keys.ENTER)
    wait(lambda: css(d, "#allocations-count")[0].text.startswith(f"{n_act:,} of {n_all:,}"), what="category filter applied")
    cell("size").send_keys("> 50 MiB", Keys.ENTER)
    wait(lambda: css(d, "#allocations-count")[0].text.startswith(f"{n_big:,} of {n_all:,}"), what="size filter with units applied")
    no_severe(d, "allocations filters")


def test_whatif_panel(server: str, driver: Any) -> None:
    d = driver
    d.get(server + "/explain?snap=h100/transformer-small-train-eager-bf16.pickle.gz")
    # the Explain page analyses the whole run first, and the what-if replays every request through the
    # allocator model: generous waits, since CI's 2 cores may be busy with the rest of the suite
    wait(lambda: css(d, "#explain-categories .main-svg"), timeout=90, what="explain content")
    fits = None
    for _ in range(6):  # a click made while a slow page is still re-rendering its content can be lost: click again
        box = wait(lambda: css(d, "#whatif-alloc-conf"), timeout=90, what="what-if panel")[0]
        if not box.get_attribute("value"):
            box.send_keys("expandable_segments:True")
        css(d, "#whatif-run")[0].click()
        try:
            fits = wait(lambda: css(d, "#whatif-fits"), timeout=20, what="what-if result")[0]
            break
        except AssertionError:
            continue
    assert fits is not None, "no what-if result after 6 clicks"
    assert fits.text.startswith("fits")
    assert "max_memory_reserved" in css(d, "#whatif-numbers")[0].text
    shot(d, "explain-whatif")
    no_severe(d, "explain what-if")
