"""Cold load + replay of one snapshot by two checkouts of memprof, interleaved in one run.

    python benchmarks/bench_load_ab.py BEFORE_ROOT AFTER_ROOT [SNAPSHOT] [--repeat 5]

Each measurement is ``bench_load.py``'s ``cold`` child (fresh process, empty cache, timed after
imports) run with PYTHONPATH set to that checkout (its C loader built in place). Runs alternate
A, B, A, B, ... so machine noise falls on both; prints the medians and their ratio as JSON.
Without SNAPSHOT, uses bench_load.py's 1M-entry file (made by make_big_snapshot.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def cold(root: Path, snapshot: Path) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="memprof-ab-") as cache:
        env = dict(os.environ, MEMPROF_CACHE_DIR=cache, PYTHONPATH=str(root))
        out = subprocess.run([sys.executable, str(root / "benchmarks" / "bench_load.py"), str(snapshot), "--child", "cold"],
                             capture_output=True, text=True, env=env, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("snapshot", nargs="?", type=Path)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    snap = a.snapshot or Path(tempfile.gettempdir()) / "memprof-bench" / "big.pickle"
    if not snap.exists():
        snap.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(HERE / "make_big_snapshot.py"), str(snap)], check=True)
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    cold(a.after, snap)  # warm the page cache
    for _ in range(a.repeat):
        runs["before"].append(cold(a.before, snap))
        runs["after"].append(cold(a.after, snap))
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("load_s", "seconds", "load_rss_mb")} for k, v in runs.items()}
    print(json.dumps({
        "snapshot": str(snap), "size_mib": round(snap.stat().st_size / 2**20, 1), "events": runs["after"][0]["events"],
        "repeat": a.repeat, "median": med,
        "ratio_after_over_before": {m: round(med["after"][m] / med["before"][m], 3) for m in ("load_s", "seconds", "load_rss_mb")},
    }, indent=1))


if __name__ == "__main__":
    main()
