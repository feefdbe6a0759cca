"""The dashboard in headless Chromium, as a user moves through it: the top navigation keeps the
selected snapshot, a clicked block is outlined, the Library fits the window, a dropped snapshot opens.

Serves the same folder as :mod:`test_browser` (the fixtures of ``conftest.py`` here).
"""

from __future__ import annotations

from typing import Any

import pytest

from chromium import css, graph_ready, no_severe, shot, wait

pytestmark = pytest.mark.browser

EAGER = "h100/transformer-small-train-eager-bf16.pickle.gz"


def _nav(d: Any, name: str) -> None:
    link = css(d, f"#nav-{name}")[0]
    d.execute_script("arguments[0].click();", link)


def test_navigation_keeps_the_selected_snapshot(server: str, driver: Any) -> None:
    d = driver
    # the default (latest) snapshot is the compiled one: open the eager one by id, then move around
    d.get(server + "/")
    wait(lambda: css(d, "#library-table td"), what="library rows")
    eager_id = d.execute_script(
        "const rows = [...document.querySelectorAll('#library-table tr')];"
        "const r = rows.find(r => r.innerText.includes(arguments[0])); return r && r.querySelector('td[data-dash-column=id]').innerText;", EAGER)
    assert eager_id is not None
    d.get(server + f"/timeline?snap={eager_id}&device=0")
    wait(lambda: "eager" in css(d, "#timeline-title")[0].text, what="eager timeline")
    for page, title_sel in (("explain", "h2"), ("allocations", "h2"), ("timeline", "#timeline-title")):
        wait(lambda: f"snap={eager_id}" in (css(d, f"#nav-{page}")[0].get_attribute("href") or ""), what=f"nav-{page} href")
        _nav(d, page)
        wait(lambda: d.current_url.split("?")[0].endswith("/" + page), what=f"{page} page")
        assert f"snap={eager_id}" in d.current_url and "device=0" in d.current_url
        wait(lambda: "eager" in css(d, title_sel)[0].text, what=f"{page} shows the eager snapshot")
        no_severe(d, page)


def test_clicked_block_is_outlined_and_stack_wraps(server: str, driver: Any) -> None:
    d = driver
    d.get(server + "/timeline?snap=" + EAGER)
    wait(lambda: graph_ready(d, "timeline-graph"), what="timeline graph")
    js_gd = "const gd = document.querySelector('#timeline-graph .js-plotly-plot');"
    # click the largest block through plotly's own event path
    d.execute_script(js_gd + "const i = gd.data.findIndex(t => t.fill === 'toself');"
                     "gd.emit('plotly_click', {points: [{curveNumber: i, pointNumber: 0, x: gd.data[i].x[1], y: gd.data[i].y[1],"
                     " customdata: gd.data[i].customdata[0], data: gd.data[i], fullData: gd._fullData[i]}]}); window.__memprofClicked = i;")
    wait(lambda: d.execute_script(js_gd + "return gd.data[window.__memprofClicked].line.width >= 3;"), what="outlined block")
    wait(lambda: css(d, "#timeline-stack-frames"), what="stack frames")
    pre = css(d, "#timeline-stack-frames")[0]
    assert d.execute_script("const p = arguments[0]; return p.scrollWidth <= p.clientWidth + 1;", pre)  # wrapped, not clipped
    shot(d, "timeline-clicked")
    no_severe(d, "timeline click")


def test_library_fits_the_window(server: str, driver: Any) -> None:
    d = driver
    d.get(server + "/")
    wait(lambda: css(d, "#library-table td"), what="library rows")
    width = d.execute_script("return document.documentElement.clientWidth;")
    table_w = d.execute_script("return document.querySelector('#library-table table').getBoundingClientRect().width;")
    assert table_w <= width, (table_w, width)
    ph = d.execute_script("return [...document.querySelectorAll('#library-table th.dash-filter input[type=text]')].map(i => i.placeholder);")
    assert ph and all(p for p in ph)


def test_upload_a_snapshot_opens_its_timeline(server: str, driver: Any) -> None:
    from pathlib import Path

    d = driver
    golden = Path(__file__).resolve().parents[2] / "data" / "golden" / "attention_naive_fwdbwd.pickle.gz"
    d.get(server + "/")
    wait(lambda: css(d, "#library-upload input[type=file]"), what="upload input")
    shot(d, "library")
    css(d, "#library-upload input[type=file]")[0].send_keys(str(golden))
    wait(lambda: "/timeline?snap=" in d.current_url, what="navigation to the uploaded snapshot")
    wait(lambda: "uploaded/" in css(d, "#timeline-title")[0].text and "attention_naive_fwdbwd" in css(d, "#timeline-title")[0].text,
          what="the uploaded snapshot's timeline")
    wait(lambda: graph_ready(d, "timeline-graph"), what="timeline graph")
    no_severe(d, "upload")


def test_flame_graph_renders(server: str, driver: Any) -> None:
    d = driver
    d.get(server + "/flame?snap=" + EAGER)
    wait(lambda: graph_ready(d, "flame-graph"), what="flame graph")
    assert d.execute_script("return document.querySelector('#flame-graph .js-plotly-plot').data[0].type;") == "icicle"
    wait(lambda: len(css(d, "#flame-graph g.slice")) > 3, what="icicle boxes drawn")
    shot(d, "flame")
    no_severe(d, "flame")


def test_device_selector_switches_device(server: str, driver: Any, tmp_path: Any) -> None:
    import gzip
    import pickle
    from pathlib import Path

    from memprof.snapshot.read import read_raw

    d = driver
    raw, _ = read_raw(Path(__file__).resolve().parents[2] / "data" / "golden" / "attention_naive_fwdbwd.pickle.gz")
    raw["device_traces"] = [raw["device_traces"][0], raw["device_traces"][0][:6]]
    two = tmp_path / "two-devices.pickle.gz"
    with gzip.open(two, "wb") as f:
        pickle.dump(raw, f, protocol=4)
    d.get(server + "/")
    wait(lambda: css(d, "#library-upload input[type=file]"), what="upload input")
    css(d, "#library-upload input[type=file]")[0].send_keys(str(two))
    wait(lambda: "/timeline?snap=" in d.current_url, what="the uploaded snapshot")
    wait(lambda: css(d, "#device-current"), what="device selector")
    assert css(d, "#device-current")[0].text.startswith("0 ")
    link = next(a for a in css(d, "#device-select a") if a.text.startswith("1 "))
    d.execute_script("arguments[0].click();", link)
    wait(lambda: "device=1" in d.current_url and css(d, "#device-current") and css(d, "#device-current")[0].text.startswith("1 "),
          what="device 1 shown")
    assert d.current_url.split("?")[0].endswith("/timeline")
    wait(lambda: graph_ready(d, "timeline-graph"), what="device 1 timeline")
    no_severe(d, "device selector")


def test_allocator_state_keyboard_stepping(server: str, driver: Any) -> None:
    from selenium.webdriver.common.keys import Keys

    d = driver
    d.get(server + "/allocator?snap=" + EAGER)
    wait(lambda: graph_ready(d, "allocator-graph"), what="allocator graph")
    box = css(d, "#allocator-event")[0]
    start = int(box.get_attribute("value"))
    line0 = css(d, "#allocator-event-line")[0].text
    assert line0.startswith(f"event {start:,}:")
    shot(d, "allocator")
    box.click()
    box.send_keys(Keys.ARROW_UP)
    wait(lambda: css(d, "#allocator-event-line")[0].text.startswith(f"event {start + 1:,}:"), what="one event forward by keyboard")
    box.send_keys(Keys.ARROW_DOWN)
    box.send_keys(Keys.ARROW_DOWN)
    wait(lambda: css(d, "#allocator-event-line")[0].text.startswith(f"event {start - 1:,}:"), what="two events back by keyboard")
    d.execute_script("arguments[0].click();", css(d, "#allocator-peak")[0])
    wait(lambda: css(d, "#allocator-event-line")[0].text.startswith(f"event {start:,}:"), what="back to the peak")
    no_severe(d, "allocator")
