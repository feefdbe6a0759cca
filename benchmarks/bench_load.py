"""Loading a large snapshot: memprof (C loader) against a bare ``pickle.load`` of the same file.

    python benchmarks/bench_load.py [SNAPSHOT.pickle] [--repeat 3] [--pure] [--out benchmarks/results/load.md]

Without SNAPSHOT, writes a 1M-entry file with benchmarks/make_big_snapshot.py first.
Every measurement runs in a fresh subprocess (time measured inside it, after imports;
peak RSS from ``ru_maxrss``, so it includes the interpreter, numpy and pandas):

* bare    — ``pickle.load`` of the file (no numpy/pandas imported).
* cold    — ``memprof.load(path, use_cache=False)`` + ``memprof.replay`` (cache dir empty).
* reopen  — the same with the Arrow cache already written (load + replay).
* pure    — (with --pure) the cold load through the pure-Python restricted unpickler.

Targets (issue): cold load+replay <= 1.5x bare; peak RSS <= 4x the pickle's size; reopen + replay < 0.3 s (judged on both, not the load alone).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(mode: str, path: str) -> dict[str, float]:
    if mode == "bare":
        import pickle

        base = _rss_mb()
        t0 = time.perf_counter()
        with open(path, "rb") as f:
            obj = pickle.load(f)  # noqa: S301 - the benchmark's own generated file
        dt = time.perf_counter() - t0
        del obj
        return {"seconds": dt, "rss_mb": _rss_mb(), "base_rss_mb": base}
    import memprof  # noqa: F401

    load_mod = sys.modules["memprof.snapshot.load"]
    from memprof.replay.timeline import replay

    base = _rss_mb()
    p = Path(path)
    t0 = time.perf_counter()
    if mode == "pure":
        snap = load_mod.load_uncached(p, fast=False)
    else:
        snap = load_mod.load(p, use_cache=mode in ("reopen", "prime"))
    t1 = time.perf_counter()
    load_rss = _rss_mb()
    rep = replay(snap, 0)
    t2 = time.perf_counter()
    assert rep.n_events == snap.info["entries_per_device"][0]
    return {
        "seconds": t2 - t0,
        "load_s": t1 - t0,
        "replay_s": t2 - t1,
        "load_rss_mb": load_rss,
        "rss_mb": _rss_mb(),
        "base_rss_mb": base,
        "events": float(len(snap.events)),
        "fast": float(load_mod.pickle_format(p) is not None),
    }


def run_child(mode: str, path: Path, cache_dir: str) -> dict[str, float]:
    env = dict(os.environ, MEMPROF_CACHE_DIR=cache_dir, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", mode, str(path)],
        env=env, check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("snapshot", nargs="?")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pure", action="store_true", help="also time the pure-Python loader once")
    ap.add_argument("--out", default=str(HERE / "results" / "load.md"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.snapshot)))
        return

    if a.snapshot:
        path = Path(a.snapshot)
    else:
        path = Path(tempfile.gettempdir()) / "memprof-bench" / "big.pickle"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, str(HERE / "make_big_snapshot.py"), str(path)], check=True)
    size_mb = path.stat().st_size / 2**20
    runs: dict[str, list[dict[str, float]]] = {"bare": [], "cold": [], "reopen": [], "pure": []}
    with tempfile.TemporaryDirectory(prefix="memprof-bench-cache-") as cache:
        run_child("bare", path, cache)  # warm the OS page cache so every mode reads from memory
        for _ in range(a.repeat):
            for mode in ("bare", "cold"):
                with tempfile.TemporaryDirectory(prefix="memprof-cold-") as empty:
                    runs[mode].append(run_child(mode, path, empty))
        run_child("prime", path, cache)  # writes the Arrow cache
        for _ in range(a.repeat):
            runs["reopen"].append(run_child("reopen", path, cache))
        if a.pure:
            with tempfile.TemporaryDirectory(prefix="memprof-cold-") as empty:
                runs["pure"].append(run_child("pure", path, empty))

    def med(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[mode])

    bare_s, cold_s = med("bare", "seconds"), med("cold", "seconds")
    rows = [
        ("bare `pickle.load`", med("bare", "seconds"), None, None, med("bare", "rss_mb")),
        ("memprof cold load + replay", cold_s, med("cold", "load_s"), med("cold", "replay_s"), med("cold", "rss_mb")),
        ("memprof reopen (cache) + replay", med("reopen", "seconds"), med("reopen", "load_s"), med("reopen", "replay_s"), med("reopen", "rss_mb")),
    ]
    if runs["pure"]:
        rows.append(("pure-Python loader (before) + replay", med("pure", "seconds"), med("pure", "load_s"), med("pure", "replay_s"), med("pure", "rss_mb")))
    ratio_t = cold_s / bare_s
    ratio_rss = med("cold", "rss_mb") / size_mb
    ratio_rss_load = med("cold", "load_rss_mb") / size_mb
    reopen_load = med("reopen", "load_s")
    reopen_total = med("reopen", "seconds")

    def fmt(x: float | None) -> str:
        return "" if x is None else f"{x:.3f}"

    cmd = "python benchmarks/bench_load.py" + (f" {a.snapshot}" if a.snapshot else "") + f" --repeat {a.repeat}" + (" --pure" if a.pure else "")
    lines = [
        "# Loading a 1M-entry snapshot",
        "",
        f"Command: `{cmd}` (each number: median of {a.repeat} fresh subprocesses; RSS is the process's peak `ru_maxrss`,",
        f"including the interpreter, numpy and pandas: {med('cold', 'base_rss_mb'):.0f} MB before loading).",
        "",
        f"Machine: {os.cpu_count()} cores, {_cpu()}, Python {platform.python_version()}, {platform.system()} {platform.release()}.",
        f"File: `{path.name}`, {size_mb:.1f} MiB, {int(runs['cold'][0]['events']):,} trace entries (benchmarks/make_big_snapshot.py).",
        "",
        "| run | total s | load s | replay s | peak RSS MB |",
        "|---|---:|---:|---:|---:|",
        *[f"| {name} | {fmt(t)} | {fmt(ls)} | {fmt(rs)} | {rss:.0f} |" for name, t, ls, rs, rss in rows],
        "",
        "| target | measured | |",
        "|---|---:|---|",
        f"| cold load + replay <= 1.5x bare `pickle.load` | {ratio_t:.2f}x | {'ok' if ratio_t <= 1.5 else 'MISSED'} |",
        f"| peak RSS (load + replay) <= 4x pickle size | {ratio_rss:.2f}x | {'ok' if ratio_rss <= 4 else 'MISSED'} |",
        f"| peak RSS (load only) <= 4x pickle size | {ratio_rss_load:.2f}x | {'ok' if ratio_rss_load <= 4 else 'MISSED'} |",
        f"| reopen from cache + replay < 0.3 s (load; load + replay) | {reopen_load:.3f} s; {reopen_total:.3f} s | {'ok' if reopen_total < 0.3 else 'MISSED'} |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
