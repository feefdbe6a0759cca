"""The per-iteration sawtooth: how fast memory rises to each peak and falls back.

Seed 004's reading: when the rise (allocations + kernel launches) and the fall (freeing the
graph) take about the same time and both are fast, the host-side allocation path, not the GPU,
sets the pace. These numbers are the evidence for :mod:`memprof.analysis.verdict`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from memprof.analysis.phases import iteration_ranges
from memprof.replay.timeline import Replay

ITERATION_COLUMNS = [
    "iteration", "start_us", "end_us", "peak_bytes", "peak_us", "trough_bytes", "rise_us", "fall_us",
    "rise_fall_ratio", "rise_allocs", "rise_allocs_per_ms", "rise_bytes_per_ms", "fall_frees",
    "fall_frees_per_ms", "fall_bytes_per_ms",
]


def _event_counts(rep: Replay) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative number of allocs and frees at or before each event index."""
    n = max(rep.n_events, 1)
    a = rep.allocations
    ai = a["alloc_idx"].to_numpy()
    fi = a["free_idx"].to_numpy()
    ca = np.cumsum(np.bincount(ai[ai >= 0], minlength=n))
    cf = np.cumsum(np.bincount(fi[fi >= 0], minlength=n))
    return ca, cf


def iterations(rep: Replay, phases: pd.DataFrame) -> pd.DataFrame:
    """One row per iteration with its peak and its rise and fall.

    The rise runs from the last trough before the peak (the first event after the lowest point
    between the iteration's start and its peak) to the peak; the fall from the peak to the first
    event that reaches the lowest point between the peak and the iteration's end. Idle time at
    the trough is thus in neither.

    Columns: iteration, start_us, end_us (the iteration's range), peak_bytes, peak_us,
    trough_bytes (lowest allocated bytes in the iteration, including its start), rise_us, fall_us,
    rise_fall_ratio (rise_us / fall_us; ~1 is a symmetric triangle), rise_allocs (allocations
    during the rise), rise_allocs_per_ms, rise_bytes_per_ms (net growth rate), fall_frees,
    fall_frees_per_ms, fall_bytes_per_ms.
    """
    its = iteration_ranges(phases)
    tl = rep.timeline
    if not len(its) or not len(tl):
        return pd.DataFrame({c: pd.Series(dtype=np.float64) for c in ITERATION_COLUMNS})
    t_idx = tl["idx"].to_numpy()
    t_us = tl["time_us"].to_numpy()
    x = tl["allocated"].to_numpy()
    ca, cf = _event_counts(rep)
    n_ev = len(ca)
    lo = np.maximum(np.searchsorted(t_idx, its["start_idx"].to_numpy(), side="left") - 1, 0)
    hi = np.searchsorted(t_idx, its["end_idx"].to_numpy(), side="right")
    k = len(its)
    cols: dict[str, np.ndarray] = {c: np.full(k, np.nan) for c in ITERATION_COLUMNS[3:]}
    for i in range(k):  # one pass per iteration (not per event); each is vectorised
        a, b = int(lo[i]), int(hi[i])
        if b <= a:
            continue
        seg = x[a:b]
        p = int(np.argmax(seg))
        before = seg[: p + 1]
        r0 = int(np.flatnonzero(before == before.min())[-1])
        after = seg[p:]
        f1 = p + int(np.argmin(after))
        rise_start = min(r0 + 1, p)  # the first event of the rise
        peak_us, rs_us, fe_us = t_us[a + p], t_us[a + rise_start], t_us[a + f1]
        rise, fall = peak_us - rs_us, fe_us - peak_us
        e_r0, e_p, e_f = t_idx[a + r0], t_idx[a + p], t_idx[a + f1]
        n_alloc = int(ca[min(e_p, n_ev - 1)] - (ca[e_r0] if e_r0 >= 0 else 0))
        n_free = int(cf[min(e_f, n_ev - 1)] - cf[min(max(e_p, 0), n_ev - 1)])
        cols["peak_bytes"][i] = seg[p]
        cols["peak_us"][i] = peak_us
        cols["trough_bytes"][i] = seg.min()
        cols["rise_us"][i] = rise
        cols["fall_us"][i] = fall
        cols["rise_allocs"][i] = n_alloc
        cols["fall_frees"][i] = n_free
        cols["rise_bytes_per_ms"][i] = (seg[p] - before.min()) / (rise / 1000) if rise > 0 else np.nan
        cols["fall_bytes_per_ms"][i] = (seg[p] - after.min()) / (fall / 1000) if fall > 0 else np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        cols["rise_fall_ratio"] = np.where(cols["fall_us"] > 0, cols["rise_us"] / cols["fall_us"], np.nan)
        cols["rise_allocs_per_ms"] = np.where(cols["rise_us"] > 0, cols["rise_allocs"] / (cols["rise_us"] / 1000), np.nan)
        cols["fall_frees_per_ms"] = np.where(cols["fall_us"] > 0, cols["fall_frees"] / (cols["fall_us"] / 1000), np.nan)
    out = pd.DataFrame({"iteration": its["iteration"].to_numpy(), "start_us": its["start_us"].to_numpy(),
                        "end_us": its["end_us"].to_numpy(), **cols})
    for c in ("peak_bytes", "trough_bytes", "rise_allocs", "fall_frees"):
        out[c] = out[c].fillna(0).astype(np.int64)
    return out[ITERATION_COLUMNS]


def _theil_sen(y: np.ndarray) -> float:
    """Median of pairwise slopes of y against its position: robust to one odd iteration."""
    n = len(y)
    if n < 2:
        return 0.0
    if n > 300:  # keep the O(n^2) pairs small
        pick = np.linspace(0, n - 1, 300).astype(np.int64)
        xs, y = pick.astype(np.float64), y[pick]
    else:
        xs = np.arange(n, dtype=np.float64)
    i, j = np.triu_indices(len(y), 1)
    return float(np.median((y[j] - y[i]) / (xs[j] - xs[i])))


def first_step_state(allocations: pd.DataFrame, iters: pd.DataFrame) -> np.ndarray:
    """Bytes of optimizer state made in the first iteration and still alive at each iteration's start.

    AdamW and friends create their state lazily in the first ``step()``: the trough after it is
    higher by that much once, which is not a leak. ``allocations`` is the categorized table
    (:func:`memprof.analysis.categories.categorize`); one value per row of ``iters``.
    """
    if not len(iters) or not len(allocations) or "category" not in allocations:
        return np.zeros(len(iters), dtype=np.int64)
    a = allocations
    first = int(iters["iteration"].min())
    st = a[(a["category"].astype(str) == "optimizer_state") & (a["iteration"].to_numpy() == first)]
    if not len(st):
        return np.zeros(len(iters), dtype=np.int64)
    t0 = st["alloc_us"].to_numpy(dtype=np.float64)
    t1 = np.where(np.isnan(st["free_us"].to_numpy(dtype=np.float64)), np.inf, st["free_us"].to_numpy(dtype=np.float64))
    size = st["size"].to_numpy()
    s = iters["start_us"].to_numpy(dtype=np.float64)
    alive = (t0[None, :] <= s[:, None]) & (t1[None, :] > s[:, None])
    return (alive * size[None, :]).sum(axis=1).astype(np.int64)


def leak_check(iters: pd.DataFrame, min_growth_bytes: int = 1 << 20, min_growth_share: float = 0.01) -> dict[str, Any]:
    """Does the trough (memory left between iterations) grow from iteration to iteration?

    The first iteration is left out when there are four or more (optimizer state and cached
    buffers are created once in it); with fewer, pass troughs without the first step's optimizer
    state (:func:`first_step_state`). Flagged when the robust (Theil-Sen) slope is positive, the
    total growth exceeds ``min_growth_bytes`` and ``min_growth_share`` of the peak, and most
    steps go up.

    Returns {flagged, slope_bytes_per_iteration, growth_bytes, n_iterations, first_trough_bytes,
    last_trough_bytes, rising_share, explanation}.
    """
    tr = iters["trough_bytes"].to_numpy().astype(np.float64) if len(iters) else np.zeros(0)
    if len(tr) >= 4:
        tr = tr[1:]
    n = len(tr)
    out: dict[str, Any] = {"flagged": False, "slope_bytes_per_iteration": 0.0, "growth_bytes": 0,
                           "n_iterations": int(len(iters)), "first_trough_bytes": int(tr[0]) if n else 0,
                           "last_trough_bytes": int(tr[-1]) if n else 0, "rising_share": 0.0}
    if n < 3:
        out["explanation"] = f"{len(iters)} iteration(s): at least 3 are needed to see a trend in the troughs."
        return out
    slope = _theil_sen(tr)
    growth = slope * (n - 1)
    rising = float(np.mean(np.diff(tr) > 0))
    peak = float(iters["peak_bytes"].max()) if len(iters) else 0.0
    flagged = bool(slope > 0 and growth >= min_growth_bytes and growth >= min_growth_share * peak and rising >= 0.5)
    out.update(slope_bytes_per_iteration=slope, growth_bytes=int(round(growth)), rising_share=rising, flagged=flagged)
    from memprof.units import fmt_bytes

    if flagged:
        out["explanation"] = (
            f"The memory left between iterations grows by about {fmt_bytes(slope)} per iteration "
            f"({fmt_bytes(growth)} over {n} iterations): something keeps a reference from one iteration to the next "
            "(e.g. accumulating a loss tensor without .item() or .detach(), or a growing list of outputs)."
        )
    else:
        out["explanation"] = f"No leak: the trough between iterations stays level ({fmt_bytes(slope)} per iteration)."
    return out
