"""Dashboard latency on a large snapshot: timeline first paint (cold and warm) and zoom round trips.

    python benchmarks/make_big_snapshot.py /tmp/big/big.pickle        # 1,000,000 entries
    PYTHONPATH=. python benchmarks/bench_dashboard.py /tmp/big/big.pickle --out benchmarks/results/dashboard.md

The snapshot must sit alone in its folder (the app serves that folder). Each "cold" measurement runs
in a fresh subprocess (times taken inside it, after imports):

* cold, no disk cache  — fresh process, empty columnar cache: load + replay + analysis + model +
                         timeline figure (the Timeline page's layout function) + JSON encoding.
* cold, disk cache     — fresh process, the Arrow cache already written by the previous run.
* warm                 — the same layout call again in the same process (model and view cached).
* zoom (callback)      — the relayoutData callback called directly for new (uncached) windows:
                         server-side re-aggregation into a Patch, JSON-encoded.
* zoom (HTTP)          — POST /_dash-update-component to a real server on 127.0.0.1 (werkzeug,
                         in a thread) for new windows, body as Dash's renderer sends it.
* page (HTTP, warm)    — the page-routing callback for /timeline over HTTP (what the browser asks
                         for on navigation), model cached.

Targets (issue): cold first paint 3 s, warm 0.5 s, zoom < 200 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _enc(obj: Any) -> int:
    import plotly

    return len(json.dumps(obj, cls=plotly.utils.PlotlyJSONEncoder))


def worker(path: Path, n_zoom: int) -> dict[str, Any]:
    """One process: cold first paint, warm first paint, zoom callback and HTTP timings."""
    import random

    from memprof.dashboard import create_app
    from memprof.dashboard.state import library

    app = create_app(path.parent)
    from memprof.dashboard.pages import timeline  # pages register themselves: only after the app exists
    lib = library()
    sid = str(lib.get(path.name).id)
    t = time.perf_counter()
    page = timeline.layout(snap=sid)
    size = _enc(page)
    cold = time.perf_counter() - t
    warm = []
    for _ in range(3):
        t = time.perf_counter()
        _enc(timeline.layout(snap=sid))
        warm.append(time.perf_counter() - t)
    m = lib.model(int(sid), None)
    rng = random.Random(0)

    def window() -> tuple[float, float]:
        a = rng.uniform(0, m.end_ms * 0.9)
        return a, a + rng.uniform(0.005, 0.3) * m.end_ms

    key = {"snap": int(sid), "device": None}
    zoom, npts = [], 0
    for _ in range(n_zoom):
        a, b = window()
        t = time.perf_counter()
        patch, rows = timeline.zoom({"xaxis.range[0]": a, "xaxis.range[1]": b}, key)
        _enc([patch.to_plotly_json(), rows])
        zoom.append(time.perf_counter() - t)
        npts = max(npts, max(len(tr["x"]) for tr in patch.to_plotly_json()["operations"][0]["params"]["value"]))
    http_zoom, http_page, http_bytes = _http(app, key, window, n_zoom, sid)
    return {"cold_s": cold, "page_json_bytes": size, "warm_s": warm, "zoom_s": zoom, "zoom_max_points_per_trace": npts,
            "http_zoom_s": http_zoom, "http_page_s": http_page, "http_zoom_bytes": http_bytes,
            "allocations": int(len(m.allocs)), "events": int(m.rep.n_events)}


def _http(app: Any, key: dict[str, Any], window: Any, n: int, sid: str) -> tuple[list[float], list[float], int]:
    import socket
    import threading
    import urllib.request

    from werkzeug.serving import make_server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = make_server("127.0.0.1", port, app.server, threaded=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    urllib.request.urlopen(url + "/").read()
    urllib.request.urlopen(url + "/_dash-layout").read()
    urllib.request.urlopen(url + "/_dash-dependencies").read()

    def post(body: dict[str, Any]) -> tuple[float, int]:
        data = json.dumps(body).encode()
        req = urllib.request.Request(url + "/_dash-update-component", data=data, headers={"Content-Type": "application/json"})
        t = time.perf_counter()
        with urllib.request.urlopen(req) as r:
            out = r.read()
        return time.perf_counter() - t, len(out)

    zs, nbytes = [], 0
    for _ in range(n):
        a, b = window()
        dt, nbytes = post({
            "output": "..timeline-graph.figure...timeline-rows.data..",
            "outputs": [{"id": "timeline-graph", "property": "figure"}, {"id": "timeline-rows", "property": "data"}],
            "inputs": [{"id": "timeline-graph", "property": "relayoutData", "value": {"xaxis.range[0]": a, "xaxis.range[1]": b}}],
            "state": [{"id": "timeline-key", "property": "data", "value": key}],
            "changedPropIds": ["timeline-graph.relayoutData"]})
        zs.append(dt)
    ps = []
    for _ in range(3):
        dt, _ = post({
            "output": ".._pages_content.children..._pages_store.data..",
            "outputs": [{"id": "_pages_content", "property": "children"}, {"id": "_pages_store", "property": "data"}],
            "inputs": [{"id": "_pages_location", "property": "pathname", "value": "/timeline"},
                       {"id": "_pages_location", "property": "search", "value": f"?snap={sid}"}],
            "state": [], "changedPropIds": ["_pages_location.pathname"]})
        ps.append(dt)
    srv.shutdown()
    return zs, ps, nbytes


def _ms(v: float) -> str:
    return f"{v * 1000:.0f} ms"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("snapshot", type=Path)
    ap.add_argument("--zooms", type=int, default=20)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a.snapshot.resolve(), a.zooms)))
        return 0
    runs = []
    with tempfile.TemporaryDirectory(prefix="memprof-bench-cache-") as cache:  # removed afterwards (it is as large as the file)
        env = dict(os.environ, MEMPROF_CACHE_DIR=cache, PYTHONPATH=str(REPO))
        for label in ("no disk cache", "disk cache written"):
            p = subprocess.run([sys.executable, __file__, str(a.snapshot), "--worker", "--zooms", str(a.zooms)],
                               env=env, capture_output=True, text=True, check=True)
            runs.append((label, json.loads(p.stdout.strip().splitlines()[-1])))
            print(label, {k: v for k, v in runs[-1][1].items() if not isinstance(v, list)}, file=sys.stderr)
    r0, r1 = runs[0][1], runs[1][1]
    warm = r0["warm_s"] + r1["warm_s"]
    zoom = r0["zoom_s"] + r1["zoom_s"]
    hz = r0["http_zoom_s"] + r1["http_zoom_s"]
    hp = r0["http_page_s"] + r1["http_page_s"]
    p95 = lambda v: sorted(v)[min(len(v) - 1, int(0.95 * len(v)))]  # noqa: E731
    rows = [
        ("timeline first paint, cold (fresh process, no disk cache)", _ms(r0["cold_s"]), "3 s"),
        ("timeline first paint, cold (fresh process, disk cache written)", _ms(r1["cold_s"]), "3 s"),
        ("timeline first paint, warm (same process; median of 6)", _ms(statistics.median(warm)), "0.5 s"),
        ("timeline page over HTTP, warm (routing callback; median of 6)", _ms(statistics.median(hp)), "0.5 s"),
        (f"zoom, callback directly (median / p95 / max of {len(zoom)} new windows)",
         f"{_ms(statistics.median(zoom))} / {_ms(p95(zoom))} / {_ms(max(zoom))}", "< 200 ms"),
        (f"zoom, POST /_dash-update-component (median / p95 / max of {len(hz)})",
         f"{_ms(statistics.median(hz))} / {_ms(p95(hz))} / {_ms(max(hz))}", "< 200 ms"),
    ]
    size = a.snapshot.stat().st_size
    md = [
        "# Dashboard latency (1M-entry snapshot)", "",
        "Command:", "", "```",
        f"{Path(sys.executable).name} benchmarks/make_big_snapshot.py /tmp/big/big.pickle",
        "PYTHONPATH=. " + f"{Path(sys.executable).name} benchmarks/bench_dashboard.py /tmp/big/big.pickle --out benchmarks/results/dashboard.md",
        "```", "",
        f"Snapshot: {a.snapshot.name}, {size / 2**20:.0f} MiB, {r0['events']:,} events, {r0['allocations']:,} allocations. "
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}.", "",
        "| measurement | time | target |", "|---|---|---|",
        *[f"| {m} | {t} | {g} |" for m, t, g in rows], "",
        f"Timeline page JSON: {r0['page_json_bytes'] / 1e6:.2f} MB. Zoom answer: a `dash.Patch` assigning only `figure.data` "
        f"(at most {r0['zoom_max_points_per_trace']:,} points per trace, {r0['http_zoom_bytes'] / 1e3:.0f} kB over HTTP).",
        "", "See the module docstring of `benchmarks/bench_dashboard.py` for what each row measures.", "",
    ]
    text = "\n".join(md)
    print(text)
    if a.out:
        a.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
