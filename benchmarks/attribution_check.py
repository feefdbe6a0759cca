"""How much of each snapshot's peak is named: ``python benchmarks/attribution_check.py SNAPSHOT... [--user-file NAME]``.

For every snapshot, what is alive at the peak split into: bytes with no module and no tensor name
(unattributed), category ``unknown``, bytes whose site is in a user file (``--user-file``: only
that file), and the largest modules. Prints one JSON object per line.
"""

from __future__ import annotations

import argparse
import json
import os

from memprof.analysis import analyze


def check(path: str, user_file: str | None = None) -> dict[str, object]:
    an = analyze(path)
    a = an.allocations
    pi = an.rep.peak_idx
    ai, fi = a["alloc_idx"].to_numpy(), a["free_idx"].to_numpy()
    alive = a[(ai <= pi) & ((fi > pi) | (fi < 0))]
    total = int(alive["size"].sum())
    files = alive["site_file"].astype(str)
    in_user = files.map(lambda f: os.path.basename(f) == user_file) if user_file else files != ""
    return {
        "snapshot": os.path.basename(path),
        "phase_source": str(an.phases["source"].iloc[0]) if len(an.phases) else None,
        "peak_bytes": int(an.rep.peak_bytes),
        "alive_at_peak_bytes": total,
        "unattributed_share": float(alive.loc[(alive["module"] == "") & (alive["name"] == ""), "size"].sum() / total) if total else 0.0,
        "unknown_share": float(alive.loc[alive["category"] == "unknown", "size"].sum() / total) if total else 0.0,
        "user_site_share": float(alive.loc[in_user.to_numpy(), "size"].sum() / total) if total else 0.0,
        "by_category": {str(k): int(v) for k, v in alive.groupby("category", observed=True)["size"].sum().items()},
        "top_modules": an.peak.to_dict()["by_module"][:8],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("snapshots", nargs="+")
    ap.add_argument("--user-file", default=None, help="count sites only in this file (basename)")
    args = ap.parse_args()
    for p in args.snapshots:
        print(json.dumps(check(p, args.user_file)))


if __name__ == "__main__":
    main()
