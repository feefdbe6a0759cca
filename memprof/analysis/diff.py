"""Compare two runs (eager vs compiled, before vs after a fix): peaks, categories, sites, timelines.

Pure DataFrames; plotting lives in memprof's figures (HTA's TraceDiff split).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from memprof.analysis.categories import CATEGORIES

if TYPE_CHECKING:
    from memprof.analysis import Analysis


@dataclass
class Diff:
    """B compared with A.

    by_category — category, a_bytes, b_bytes, delta (at each run's peak).
    by_site     — site, a_bytes, b_bytes, delta, status ('disappeared', 'appeared', 'changed'); unchanged
                  sites are left out; largest |delta| first.
    aligned     — run ('A'/'B'), phase, iteration, x (aligned position: k + fraction of the k-th shared
                  phase's time), allocated; the two timelines on one axis.
    """

    peak_a_bytes: int
    peak_b_bytes: int
    peak_delta_bytes: int
    by_category: pd.DataFrame
    by_site: pd.DataFrame
    aligned: pd.DataFrame
    aligned_by: str

    def to_dict(self, top: int = 15) -> dict[str, Any]:
        return {
            "peak_a_bytes": self.peak_a_bytes, "peak_b_bytes": self.peak_b_bytes, "peak_delta_bytes": self.peak_delta_bytes,
            "by_category": [{"category": str(c), "a_bytes": int(a), "b_bytes": int(b), "delta": int(d)}
                            for c, a, b, d in self.by_category.itertuples(index=False)],
            "by_site": [{"site": str(s), "a_bytes": int(a), "b_bytes": int(b), "delta": int(d), "status": str(st)}
                        for s, a, b, d, st in self.by_site.head(top).itertuples(index=False)],
            "aligned_by": self.aligned_by,
        }


def _compare(a: pd.DataFrame, b: pd.DataFrame, key: str) -> pd.DataFrame:
    m = a[[key, "bytes"]].merge(b[[key, "bytes"]], on=key, how="outer", suffixes=("_a", "_b"))
    m = m.rename(columns={"bytes_a": "a_bytes", "bytes_b": "b_bytes"})
    m["a_bytes"] = m["a_bytes"].fillna(0).astype(np.int64)
    m["b_bytes"] = m["b_bytes"].fillna(0).astype(np.int64)
    m["delta"] = m["b_bytes"] - m["a_bytes"]
    return m


def _phase_keys(phases: pd.DataFrame) -> pd.DataFrame:
    """The phases used for alignment: fine phases when known, else steps; warm-up left out."""
    p = phases[phases["phase"] != "warmup"]
    fine = p[p["phase"] != "step"]
    return (fine if len(fine) else p).sort_values("start_idx", kind="stable")


def _place(an: "Analysis", keys: pd.DataFrame, run: str) -> pd.DataFrame:
    """Timeline rows of one run on the shared axis (rows outside the shared phases are dropped)."""
    tl = an.rep.timeline
    idx, t, y = tl["idx"].to_numpy(), tl["time_us"].to_numpy(), tl["allocated"].to_numpy()
    s, e = keys["start_idx"].to_numpy(), keys["end_idx"].to_numpy()
    j = np.searchsorted(s, idx, side="right") - 1
    jj = np.maximum(j, 0)
    ok = (j >= 0) & (idx <= e[jj]) if len(s) else np.zeros(len(idx), bool)
    s_us, e_us = keys["start_us"].to_numpy(), keys["end_us"].to_numpy()
    span = np.maximum(e_us - s_us, 1e-9)
    frac = np.clip((t - s_us[jj]) / span[jj], 0.0, 1.0)
    x = keys["x0"].to_numpy()[jj] + frac
    return pd.DataFrame({"run": run, "phase": keys["phase"].to_numpy()[jj][ok], "iteration": keys["iteration"].to_numpy()[jj][ok],
                         "x": x[ok], "allocated": y[ok]})


def align(a: "Analysis", b: "Analysis") -> tuple[pd.DataFrame, str]:
    """Both timelines on one axis: by shared (phase, iteration) keys, else by normalised window time."""
    ka, kb = _phase_keys(a.phases), _phase_keys(b.phases)
    shared = ka.merge(kb[["phase", "iteration"]], on=["phase", "iteration"])
    if len(shared) and (ka["source"].iloc[0] != "whole-window"):
        order = shared.sort_values("start_idx", kind="stable")[["phase", "iteration"]].reset_index(drop=True)
        order["x0"] = np.arange(len(order), dtype=np.float64)
        parts = [_place(an, k.merge(order, on=["phase", "iteration"]).sort_values("start_idx", kind="stable"), run)
                 for an, k, run in ((a, ka, "A"), (b, kb, "B"))]
        return pd.concat(parts, ignore_index=True), "phase"
    parts = []
    for an, run in ((a, "A"), (b, "B")):
        tl = an.rep.timeline
        t = tl["time_us"].to_numpy()
        span = max(an.rep.end_us - an.rep.start_us, 1e-9)
        parts.append(pd.DataFrame({"run": run, "phase": "window", "iteration": -1,
                                   "x": (t - an.rep.start_us) / span, "allocated": tl["allocated"].to_numpy()}))
    return pd.concat(parts, ignore_index=True), "time"


def diff(a: "Analysis", b: "Analysis") -> Diff:
    """Compare run B with run A at their peaks and along their phases."""
    pa, pb = a.peak, b.peak
    cats = _compare(pa.by_category, pb.by_category, "category")
    cats["category"] = pd.Categorical(cats["category"], categories=CATEGORIES)
    cats = cats.sort_values("category", kind="stable").reset_index(drop=True)
    cats["category"] = cats["category"].astype(str)
    sites = _compare(pa.by_site, pb.by_site, "site")
    sites["status"] = np.where(sites["a_bytes"] == 0, "appeared", np.where(sites["b_bytes"] == 0, "disappeared", "changed"))
    sites = sites[sites["delta"] != 0]
    sites = sites.iloc[np.argsort(-np.abs(sites["delta"].to_numpy()), kind="stable")].reset_index(drop=True)
    aligned, by = align(a, b)
    return Diff(peak_a_bytes=pa.measured_bytes, peak_b_bytes=pb.measured_bytes,
                peak_delta_bytes=pb.measured_bytes - pa.measured_bytes,
                by_category=cats[["category", "a_bytes", "b_bytes", "delta"]],
                by_site=sites[["site", "a_bytes", "b_bytes", "delta", "status"]], aligned=aligned, aligned_by=by)
