"""The dashboard in headless Chromium, as a user moves through it: the top navigation keeps the
selected snapshot, a clicked block is outlined, the Library fits the window, a dropped snapshot opens.

Shares the server and browser fixtures of :mod:`test_browser` (same skip rules).
"""

from __future__ import annotations

from typing import Any

import pytest

from test_browser import _css, _graph_ready, _no_severe, _shot, _wait, driver, server  # noqa: F401

pytestmark = pytest.mark.browser

EAGER = "h100/transformer-small-train-eager-bf16.pickle.gz"


def _nav(d: Any, name: str) -> None:
    link = _css(d, f"#nav-{name}")[0]
    d.execute_script("arguments[0].click();", link)


def test_navigation_keeps_the_selected_snapshot(server: str, driver: Any) -> None:
    d = driver
    # the default (latest) snapshot is the compiled one: open the eager one by id, then move around
    d.get(server + "/")
    _wait(lambda: _css(d, "#library-table td"), what="library rows")
    eager_id = d.execute_script(
        "const rows = [...document.querySelectorAll('#library-table tr')];"
        "const r = rows.find(r => r.innerText.includes(arguments[0])); return r && r.querySelector('td[data-dash-column=id]').innerText;", EAGER)
    assert eager_id is not None
    d.get(server + f"/timeline?snap={eager_id}&device=0")
    _wait(lambda: "eager" in _css(d, "#timeline-title")[0].text, what="eager timeline")
    for page, title_sel in (("explain", "h2"), ("allocations", "h2"), ("timeline", "#timeline-title")):
        _wait(lambda: f"snap={eager_id}" in (_css(d, f"#nav-{page}")[0].get_attribute("href") or ""), what=f"nav-{page} href")
        _nav(d, page)
        _wait(lambda: d.current_url.split("?")[0].endswith("/" + page), what=f"{page} page")
        assert f"snap={eager_id}" in d.current_url and "device=0" in d.current_url
        _wait(lambda: "eager" in _css(d, title_sel)[0].text, what=f"{page} shows the eager snapshot")
        _no_severe(d, page)


def test_clicked_block_is_outlined_and_stack_wraps(server: str, driver: Any) -> None:
    d = driver
    d.get(server + "/timeline?snap=" + EAGER)
    _wait(lambda: _graph_ready(d, "timeline-graph"), what="timeline graph")
    js_gd = "const gd = document.querySelector('#timeline-graph .js-plotly-plot');"
    # click the largest block through plotly's own event path
    d.execute_script(js_gd + "const i = gd.data.findIndex(t => t.fill === 'toself');"
                     "gd.emit('plotly_click', {points: [{curveNumber: i, pointNumber: 0, x: gd.data[i].x[1], y: gd.data[i].y[1],"
                     " customdata: gd.data[i].customdata[0], data: gd.data[i], fullData: gd._fullData[i]}]}); window.__memprofClicked = i;")
    _wait(lambda: d.execute_script(js_gd + "return gd.data[window.__memprofClicked].line.width >= 3;"), what="outlined block")
    _wait(lambda: _css(d, "#timeline-stack-frames"), what="stack frames")
    pre = _css(d, "#timeline-stack-frames")[0]
    assert d.execute_script("const p = arguments[0]; return p.scrollWidth <= p.clientWidth + 1;", pre)  # wrapped, not clipped
    _shot(d, "timeline-clicked")
    _no_severe(d, "timeline click")


def test_library_fits_the_window(server: str, driver: Any) -> None:
    d = driver
    d.get(server + "/")
    _wait(lambda: _css(d, "#library-table td"), what="library rows")
    width = d.execute_script("return document.documentElement.clientWidth;")
    table_w = d.execute_script("return document.querySelector('#library-table table').getBoundingClientRect().width;")
    assert table_w <= width, (table_w, width)
    ph = d.execute_script("return [...document.querySelectorAll('#library-table th.dash-filter input[type=text]')].map(i => i.placeholder);")
    assert ph and all(p for p in ph)


def test_upload_a_snapshot_opens_its_timeline(server: str, driver: Any) -> None:
    from pathlib import Path

    d = driver
    golden = Path(__file__).resolve().parent / "data" / "golden" / "attention_naive_fwdbwd.pickle.gz"
    d.get(server + "/")
    _wait(lambda: _css(d, "#library-upload input[type=file]"), what="upload input")
    _shot(d, "library")
    _css(d, "#library-upload input[type=file]")[0].send_keys(str(golden))
    _wait(lambda: "/timeline?snap=" in d.current_url, what="navigation to the uploaded snapshot")
    _wait(lambda: "uploaded/" in _css(d, "#timeline-title")[0].text and "attention_naive_fwdbwd" in _css(d, "#timeline-title")[0].text,
          what="the uploaded snapshot's timeline")
    _wait(lambda: _graph_ready(d, "timeline-graph"), what="timeline graph")
    _no_severe(d, "upload")


def test_flame_graph_renders(server: str, driver: Any) -> None:
    d = driver
    d.get(server + "/flame?snap=" + EAGER)
    _wait(lambda: _graph_ready(d, "flame-graph"), what="flame graph")
    assert d.execute_script("return document.querySelector('#flame-graph .js-plotly-plot').data[0].type;") == "icicle"
    _wait(lambda: len(_css(d, "#flame-graph g.slice")) > 3, what="icicle boxes drawn")
    _shot(d, "flame")
    _no_severe(d, "flame")


def test_device_selector_switches_device(server: str, driver: Any, tmp_path: Any) -> None:
    import gzip
    import pickle
    from pathlib import Path

    from memprof.snapshot.read import read_raw

    d = driver
    raw, _ = read_raw(Path(__file__).resolve().parent / "data" / "golden" / "attention_naive_fwdbwd.pickle.gz")
    raw["device_traces"] = [raw["device_traces"][0], raw["device_traces"][0][:6]]
    two = tmp_path / "two-devices.pickle.gz"
    with gzip.open(two, "wb") as f:
        pickle.dump(raw, f, protocol=4)
    d.get(server + "/")
    _wait(lambda: _css(d, "#library-upload input[type=file]"), what="upload input")
    _css(d, "#library-upload input[type=file]")[0].send_keys(str(two))
    _wait(lambda: "/timeline?snap=" in d.current_url, what="the uploaded snapshot")
    _wait(lambda: _css(d, "#device-current"), what="device selector")
    assert _css(d, "#device-current")[0].text.startswith("0 ")
    link = next(a for a in _css(d, "#device-select a") if a.text.startswith("1 "))
    d.execute_script("arguments[0].click();", link)
    _wait(lambda: "device=1" in d.current_url and _css(d, "#device-current") and _css(d, "#device-current")[0].text.startswith("1 "),
          what="device 1 shown")
    assert d.current_url.split("?")[0].endswith("/timeline")
    _wait(lambda: _graph_ready(d, "timeline-graph"), what="device 1 timeline")
    _no_severe(d, "device selector")


def test_allocator_state_keyboard_stepping(server: str, driver: Any) -> None:
    from selenium.webdriver.common.keys import Keys

    d = driver
    d.get(server + "/allocator?snap=" + EAGER)
    _wait(lambda: _graph_ready(d, "allocator-graph"), what="allocator graph")
    box = _css(d, "#allocator-event")[0]
    start = int(box.get_attribute("value"))
    line0 = _css(d, "#allocator-event-line")[0].text
    assert line0.startswith(f"event {start:,}:")
    _shot(d, "allocator")
    box.click()
    box.send_keys(Keys.ARROW_UP)
    _wait(lambda: _css(d, "#allocator-event-line")[0].text.startswith(f"event {start + 1:,}:"), what="one event forward by keyboard")
    box.send_keys(Keys.ARROW_DOWN)
    box.send_keys(Keys.ARROW_DOWN)
    _wait(lambda: _css(d, "#allocator-event-line")[0].text.startswith(f"event {start - 1:,}:"), what="two events back by keyboard")
    d.execute_script("arguments[0].click();", _css(d, "#allocator-peak")[0])
    _wait(lambda: _css(d, "#allocator-event-line")[0].text.startswith(f"event {start:,}:"), what="back to the peak")
    _no_severe(d, "allocator")
