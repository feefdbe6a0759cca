"""Before/after at 1M and 10M entries, interleaved in one run (the machine is shared and noisy).

    git archive main | tar -x -C /tmp/base && (cd /tmp/base && python setup.py build_ext --inplace -q)
    MEMPROF_MAX_BYTES=8G python benchmarks/bench_scale.py --old /tmp/base --new . \\
        /tmp/big/d1m/big1m.pickle /tmp/big/d10m/big10m.pickle --rounds 2 --out benchmarks/results/scale_10m.md

Each snapshot must sit alone in its folder (the dashboard serves the folder). For every round and
snapshot, the old and the new code tree run one after the other, each in fresh processes:

* paint, cold     — empty cache dir: load + replay + analysis + model + timeline figure + JSON.
* paint, cached   — a second fresh process over the cache the first one wrote.
* zoom            — in that second process: the zoom callback for 20 new random windows (Patch + JSON).
* explain, cold   — ``memprof explain FILE`` with an empty cache dir (wall clock, subprocess).
* peak RSS        — ``ru_maxrss`` of each process.

Times are ratios new/old measured minutes apart on the same machine state; absolute numbers depend
on the load (``uptime`` is printed with the results).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def worker(path: Path, n_zoom: int) -> dict[str, Any]:
    import random

    import plotly

    from memprof.dashboard import create_app
    from memprof.dashboard.state import library

    try:  # as `memprof serve` does (the old tree may not have it)
        from memprof.snapshot.malloc_tuning import keep_freed_memory

        keep_freed_memory()
    except ImportError:
        pass
    create_app(path.parent)
    from memprof.dashboard.pages import timeline

    lib = library()
    sid = str(lib.get(path.name).id)
    t, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    page = timeline.layout(snap=sid)
    json.dumps(page, cls=plotly.utils.PlotlyJSONEncoder)
    paint, r1 = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
    cpu = {"user_s": r1.ru_utime - r0.ru_utime, "sys_s": r1.ru_stime - r0.ru_stime}
    m = lib.model(int(sid), None)
    rng = random.Random(0)
    key = {"snap": int(sid), "device": None}
    zoom = []
    for _ in range(n_zoom):
        a = rng.uniform(0, m.end_ms * 0.9)
        b = a + rng.uniform(0.005, 0.3) * m.end_ms
        t = time.perf_counter()
        patch, rows = timeline.zoom({"xaxis.range[0]": a, "xaxis.range[1]": b}, key)
        json.dumps([patch.to_plotly_json(), rows], cls=plotly.utils.PlotlyJSONEncoder)
        zoom.append(time.perf_counter() - t)
    return {"paint_s": paint, "zoom_s": zoom, "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **cpu}


PREFAULT_GIB = 0.0


def prefault() -> None:
    """Touch PREFAULT_GIB of fresh memory in a throwaway process. On this VM (Firecracker with free
    page reporting) memory the host took back costs ~1.6 s/GiB to touch again (sys time), so
    whichever process runs first after a pause pays seconds that the next one does not: touching
    it first puts every measured process on the same footing (see the results' notes)."""
    if PREFAULT_GIB > 0:
        subprocess.run([sys.executable, "-c", f"import numpy as np; np.ones(int({PREFAULT_GIB} * 2**30), dtype=np.int8)"], check=True)


def _run(tree: Path, args: list[str], cache: str) -> tuple[float, str, float]:
    prefault()
    env = dict(os.environ, MEMPROF_CACHE_DIR=cache, PYTHONPATH=str(tree))
    env.setdefault("MEMPROF_MAX_BYTES", "8G")
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    p = subprocess.run([sys.executable, *args], env=env, cwd=tree, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if p.returncode:
        raise SystemExit(f"{tree}: {' '.join(args)} failed:\n{p.stderr[-3000:]}")
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return dt, p.stdout, (rss if rss > before else float("nan")) / 1024


def measure(tree: Path, snap: Path, n_zoom: int) -> dict[str, Any]:
    me = str(Path(__file__).resolve())
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="memprof-scale-") as cache:
        _, so, _ = _run(tree, [me, "--worker", str(snap), "--zooms", "0"], cache)
        r = json.loads(so.strip().splitlines()[-1])
        out["paint_cold_s"], out["paint_cold_rss_mib"] = r["paint_s"], r["rss_mib"]
        out["paint_cold_user_s"], out["paint_cold_sys_s"] = r["user_s"], r["sys_s"]
        _, so, _ = _run(tree, [me, "--worker", str(snap), "--zooms", str(n_zoom)], cache)
        r = json.loads(so.strip().splitlines()[-1])
        out["paint_cached_s"], out["zoom_s"], out["paint_cached_rss_mib"] = r["paint_s"], r["zoom_s"], r["rss_mib"]
    with tempfile.TemporaryDirectory(prefix="memprof-scale-") as cache:
        code = ("import resource,sys,time;t=time.perf_counter();from memprof.cli import main;rc=main(['explain',sys.argv[1]]);"
                "print('\\n'+str(time.perf_counter()-t)+' '+str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024));sys.exit(rc)")
        wall, so, _ = _run(tree, ["-c", code, str(snap)], cache)
        dt, rss = so.strip().splitlines()[-1].split()
        # the whole process, start to exit: imports, and cache writes still running at exit
        out["explain_cold_s"], out["explain_rss_mib"] = wall, float(rss)
    return out


def p95(v: list[float]) -> float:
    return sorted(v)[min(len(v) - 1, int(0.95 * len(v)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("snapshots", type=Path, nargs="*")
    ap.add_argument("--old", type=Path, help="the code tree before (e.g. main exported with git archive)")
    ap.add_argument("--new", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--zooms", type=int, default=20)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--prefault", type=float, default=0.0, metavar="GIB",
                    help="touch this much memory in a throwaway process before each measured one (see prefault())")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    global PREFAULT_GIB
    PREFAULT_GIB = a.prefault
    if a.worker:
        print(json.dumps(worker(a.worker.resolve(), a.zooms)))
        return 0
    trees = [("old", a.old.resolve()), ("new", a.new.resolve())] if a.old else [("new", a.new.resolve())]
    res: dict[tuple[str, str], list[dict[str, Any]]] = {}
    load = [os.getloadavg()[0]]
    for _ in range(a.rounds):
        for snap in a.snapshots:
            for label, tree in trees:
                r = measure(tree, snap.resolve(), a.zooms)
                res.setdefault((snap.name, label), []).append(r)
                load.append(os.getloadavg()[0])
                print(snap.name, label, {k: (round(v, 3) if isinstance(v, float) else f"p95 {p95(v):.3f}") for k, v in r.items()},
                      file=sys.stderr, flush=True)
    lines = ["# Scale: 1M and 10M entries, before and after (issue 15)", "", "Command:", "", "```",
             " ".join(["MEMPROF_MAX_BYTES=8G", "python", "benchmarks/bench_scale.py", *(f"--old {a.old}".split() if a.old else []),
                       "--new", ".", *map(str, a.snapshots), "--rounds", str(a.rounds),
                       *(["--prefault", str(a.prefault)] if a.prefault else [])]), "```", "",
             f"Machine: {os.cpu_count()} cores; 1-minute load average during the run "
             f"{min(load):.1f}-{max(load):.1f}. Old and new ran interleaved, so compare them row by row (ratio column); "
             "absolute times are inflated by the load. Median over rounds; zoom p95 over all zooms of all rounds.", ""]
    for snap in a.snapshots:
        size = snap.stat().st_size
        lines += [f"## {snap.name} ({size / 2**20:.0f} MiB)", "", "| measurement | " + " | ".join(l for l, _ in trees)
                  + (" | new / old |" if len(trees) == 2 else " |"), "|---|" + "---|" * (len(trees) + (len(trees) == 2))]
        rows = [("timeline first paint, cold (no cache)", "paint_cold_s", "s"),
                ("  of which CPU in user space", "paint_cold_user_s", "s"), ("  of which CPU in the kernel (page faults)", "paint_cold_sys_s", "s"),
                ("timeline first paint, from the cache", "paint_cached_s", "s"),
                ("zoom round trip p95 (callback + JSON)", "zoom_s", "ms"), ("`memprof explain`, cold", "explain_cold_s", "s"),
                ("peak RSS, cold paint (MiB)", "paint_cold_rss_mib", "MiB"), ("peak RSS, explain (MiB)", "explain_rss_mib", "MiB")]
        for name, k, unit in rows:
            vals = []
            for label, _ in trees:
                rs = res[(snap.name, label)]
                v = p95([z for r in rs for z in r[k]]) * 1000 if k == "zoom_s" else statistics.median(r[k] for r in rs)
                vals.append(v)
            fmt = (lambda v: f"{v:.0f} ms") if unit == "ms" else ((lambda v: f"{v:.0f} MiB (x{v * 2**20 / size:.1f} file)") if unit == "MiB" else (lambda v: f"{v:.2f} s"))
            lines.append(f"| {name} | " + " | ".join(fmt(v) for v in vals) + (f" | {vals[1] / vals[0]:.2f} |" if len(vals) == 2 else " |"))
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if a.out:
        a.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
