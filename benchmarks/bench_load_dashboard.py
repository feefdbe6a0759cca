"""Dashboard under load: N clients open the same 1M-entry timeline at once.

    PYTHONPATH=. python benchmarks/bench_load_dashboard.py --out benchmarks/results/load_dashboard.md

What it does (bounded: N requests per run, a per-request and a per-run time limit, loopback only):

1. writes a 1,000,000-entry snapshot with ``benchmarks/make_big_snapshot.py`` into a fresh
   temporary folder (deleted at the end, with the columnar cache it creates there);
2. for each server mode, starts the dashboard in a subprocess on 127.0.0.1 (an ephemeral port;
   werkzeug, threaded, as ``memprof serve`` runs it) over that folder;
3. releases N client threads at once, each POSTing the page-routing callback for
   ``/timeline?snap=0`` (what a browser sends when it opens the page), and times each answer;
4. reads the server's peak resident memory (``VmHWM`` in ``/proc/PID/status``) and how many
   times the model was built, then stops the server.

Modes, all measured in one run of this script:

* ``before``  — the caches as they were: an LRU bounded by entry count, no single flight
  (each miss builds its own model), reproduced here by swapping the library's caches;
* ``after``   — ``memprof.dashboard.state.ByteLRU``: one build per key, the others wait; bounded by bytes;
* ``after, no disk cache`` — the same with the columnar (Arrow) cache emptied first, so the
  one build also parses the pickle.

``before`` and ``after`` run with the Arrow cache already written (by a warm-up process), so they
compare the server's own work. ``before`` runs last: its twenty concurrent builds load the machine. Target (issue 10): all N answered, the slowest within 5 s, server RSS
under 1.5 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ROUTER = ".._pages_content.children..._pages_store.data.."


def serve(folder: Path, mode: str, port: int) -> None:
    """The server subprocess: the app over ``folder`` on 127.0.0.1:``port``."""
    import threading as th
    from collections import OrderedDict

    from werkzeug.serving import make_server

    from memprof.dashboard import create_app
    from memprof.dashboard.state import library

    app = create_app(folder)
    lib = library()
    if mode == "before":
        class CountLRU:  # the dashboard's cache before single flight: bounded by count, every miss builds
            def __init__(self, size: int) -> None:
                self.size, self._d, self._lock, self.n_builds, self.total = size, OrderedDict(), th.Lock(), 0, 0

            def get_or_make(self, key: Any, make: Any) -> Any:
                with self._lock:
                    if key in self._d:
                        self._d.move_to_end(key)
                        return self._d[key]
                self.n_builds += 1
                value = make()
                with self._lock:
                    self._d[key] = value
                    while len(self._d) > self.size:
                        self._d.popitem(last=False)
                return value

        lib.models, lib.views = CountLRU(6), CountLRU(64)  # type: ignore[assignment]

    @app.server.route("/_bench/stats")
    def stats() -> Any:
        return {"model_builds": lib.models.n_builds, "model_cache_bytes": lib.models.total}

    srv = make_server("127.0.0.1", port, app.server, threaded=True)
    print("ready", flush=True)
    srv.serve_forever()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def run_mode(folder: Path, mode: str, clients: int, timeout: float, env: dict[str, str]) -> dict[str, Any]:
    port = _free_port()
    load = os.getloadavg()[0]
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(folder), "--mode", mode, "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("server did not start")
        url = f"http://127.0.0.1:{port}"
        urllib.request.urlopen(url + "/_dash-dependencies", timeout=30).read()  # registers the pages' callbacks
        body = json.dumps({
            "output": ROUTER,
            "outputs": [{"id": "_pages_content", "property": "children"}, {"id": "_pages_store", "property": "data"}],
            "inputs": [{"id": "_pages_location", "property": "pathname", "value": "/timeline"},
                       {"id": "_pages_location", "property": "search", "value": "?snap=0"}],
            "state": [], "changedPropIds": ["_pages_location.pathname"]}).encode()
        times: list[float | None] = [None] * clients
        sizes = [0] * clients
        errors: list[str] = []
        gate = threading.Barrier(clients + 1)

        def client(i: int) -> None:
            req = urllib.request.Request(url + "/_dash-update-component", data=body, headers={"Content-Type": "application/json"})
            gate.wait()
            t = time.perf_counter()
            try:
                with urllib.request.urlopen(req, timeout=timeout) as r:
                    out = r.read()
                    ok = r.status == 200 and b"timeline-graph" in out
            except Exception as e:  # a timeout or a 500 counts as unanswered
                errors.append(f"{type(e).__name__}: {e}")
                return
            if ok:
                times[i], sizes[i] = time.perf_counter() - t, len(out)
            else:
                errors.append("answer without the timeline")

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
        for t in threads:
            t.start()
        t0 = time.perf_counter()
        gate.wait()
        for t in threads:
            t.join(timeout + 5)
        wall = time.perf_counter() - t0
        stats = json.loads(urllib.request.urlopen(url + "/_bench/stats", timeout=30).read())
        done = [t for t in times if t is not None]
        return {"mode": mode, "clients": clients, "answered": len(done), "errors": errors[:3],
                "median_s": statistics.median(done) if done else None, "slowest_s": max(done) if done else None,
                "fastest_s": min(done) if done else None, "wall_s": wall, "peak_rss": _peak_rss(proc.pid),
                "answer_bytes": max(sizes), "loadavg": load, **stats}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds one request may take (a run ends after it)")
    ap.add_argument("--modes", default="after,after-cold,before")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="after", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        serve(a.serve, a.mode, a.port)
        return 0
    if not 1 <= a.clients <= 64:
        ap.error("--clients: 1 to 64")
    tmp = Path(tempfile.mkdtemp(prefix="memprof-load-"))
    try:
        folder, cache = tmp / "served", tmp / "cache"
        folder.mkdir()
        snap = folder / "big.pickle"
        t = time.perf_counter()
        subprocess.run([sys.executable, str(REPO / "benchmarks" / "make_big_snapshot.py"), str(snap), "--entries", str(a.entries)],
                       check=True)
        print(f"wrote {snap.stat().st_size / 2**20:.0f} MiB in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        env = dict(os.environ, MEMPROF_CACHE_DIR=str(cache), PYTHONPATH=str(REPO))
        subprocess.run([sys.executable, "-m", "memprof", "stats", str(snap)], env=env, check=True, stdout=subprocess.DEVNULL)
        results = []
        for mode in a.modes.split(","):
            if mode == "after-cold":
                shutil.rmtree(cache, ignore_errors=True)
            elif not cache.exists():
                subprocess.run([sys.executable, "-m", "memprof", "stats", str(snap)], env=env, check=True, stdout=subprocess.DEVNULL)
            r = run_mode(folder, "before" if mode == "before" else "after", a.clients, a.timeout, env)
            r["mode"] = mode
            results.append(r)
            print(json.dumps(r), file=sys.stderr)
        text = report(results, a, snap.stat().st_size)
        print(text)
        if a.out:
            a.out.write_text(text)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def report(results: list[dict[str, Any]], a: argparse.Namespace, size: int) -> str:
    s = lambda v: "-" if v is None else f"{v:.1f} s"  # noqa: E731
    label = {"before": "before: count-bounded LRU, no single flight",
             "after": "after: single flight, byte-bounded (disk cache written)",
             "after-cold": "after: single flight, byte-bounded, no disk cache"}
    rows = [f"| {label.get(r['mode'], r['mode'])} | {r['answered']} / {r['clients']} | {s(r['median_s'])} | {s(r['slowest_s'])} | "
            f"{r['peak_rss'] / 2**30:.2f} GiB | {r['model_builds']} | {r['loadavg']:.1f} |" for r in results]
    return "\n".join([
        f"# Dashboard under load: {a.clients} clients open the same {a.entries:,}-entry timeline at once", "",
        "Command:", "", "```",
        f"PYTHONPATH=. {Path(sys.executable).name} benchmarks/bench_load_dashboard.py --out benchmarks/results/load_dashboard.md",
        "```", "",
        f"Snapshot from `benchmarks/make_big_snapshot.py` ({size / 2**20:.0f} MiB pickle), served on 127.0.0.1 by werkzeug "
        f"(threaded). Each client POSTs the page-routing callback for `/timeline?snap=0`, all released at once. "
        f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared), Python {platform.python_version()}. "
        "Server RSS is the peak (`VmHWM`). Target: all answered, slowest within 5 s, RSS under 1.5 GB.", "",
        "| server | answered | median | slowest | server peak RSS | model builds | load average at start |",
        "|---|---|---|---|---|---|---|",
        *rows, "",
        "The modes ran one after the other in one run of the script; see its docstring for what each does. "
        f"The load average (1 min, {os.cpu_count()} cores shared with other work) says how busy the machine was.", "",
    ])


if __name__ == "__main__":
    sys.exit(main())
