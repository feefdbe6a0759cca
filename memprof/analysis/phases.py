"""Where each phase (forward, backward, optimizer, step) of each iteration lies in the trace.

Sources, in order of trust:

1. ``annotations`` — record_function ranges named ``memprof/<phase>/<iteration>``
   (START/END pairs by name, per device), as ``memprof record`` writes them;
2. ``user_metadata`` — runs of trace entries carrying such a label (newer torch);
3. ``meta`` — ``meta['phases']`` written beside the snapshot;
3b. ``attribution`` — module calls, backward node executions and optimizer steps that
   memprof's recorder logged inside the snapshot (:func:`memprof.analysis.attribution.phases`);
3c. ``frames`` — for snapshots from anyone else: runs of forward / backward / optimizer
   allocations told apart by their stacks (:mod:`memprof.analysis.stackphases`);
4. ``sawtooth`` — detected from the allocated-bytes signal: iterations are the spans
   between troughs of the repeating sawtooth, the period estimated by autocorrelation;
5. ``whole-window`` — one 'step' covering everything when nothing repeats.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from memprof.snapshot.tables import Snapshot
from memprof.snapshot.meta import PHASE_PREFIX, parse_phase_label
from memprof.replay.timeline import Replay
from memprof.analysis.stackphases import PHASE_COLUMNS, empty_phases as _empty, from_frames

_PHASE_WORD = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
#: Phases that split an iteration (``step`` and ``warmup`` span whole iterations).
FINE_PHASES = ("forward", "backward", "optimizer")


def _finish(df: pd.DataFrame, times: np.ndarray, source: str) -> pd.DataFrame:
    """Add start_idx/end_idx (first/last event inside each range) and sort."""
    if len(times):
        df["start_idx"] = np.searchsorted(times, df["start_us"].to_numpy(), side="left").astype(np.int64)
        df["end_idx"] = (np.searchsorted(times, df["end_us"].to_numpy(), side="right") - 1).astype(np.int64)
    else:
        df["start_idx"] = np.zeros(len(df), np.int64)
        df["end_idx"] = np.full(len(df), -1, np.int64)
    df["source"] = source
    df["start_us"] = df["start_us"].astype(np.float64)
    df["end_us"] = df["end_us"].astype(np.float64)
    df["iteration"] = df["iteration"].astype(np.int64)
    return df[PHASE_COLUMNS].sort_values(["start_us", "end_us"], kind="stable", ignore_index=True)


def _parse_labels(names: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(is memprof label, phase, iteration or -1) for each name; parsed once per distinct name."""
    uniq, inv = np.unique(names.to_numpy(dtype=object).astype(str), return_inverse=True)
    parsed = [parse_phase_label(u) for u in uniq]
    # only labels memprof wrote: a plain phase word (a Python frame such as 'memprof/snapshot/meta.py(74): f' is not one)
    parsed = [p if p is not None and _PHASE_WORD.match(p[0]) else None for p in parsed]
    ok = np.array([p is not None for p in parsed], dtype=bool)
    ph = np.array([p[0] if p else "" for p in parsed], dtype=object)
    it = np.array([(p[1] if p and p[1] is not None else -1) for p in parsed], dtype=np.int64)
    return ok[inv], ph[inv], it[inv]


def from_annotations(snap: Snapshot, device: int, times: np.ndarray) -> pd.DataFrame:
    """Phases from record_function START/END pairs (the k-th START of a name pairs with its k-th END)."""
    ann = snap.annotations
    if ann is None or not len(ann):
        return _empty()
    ann = ann[ann["name"].astype(str).str.startswith(PHASE_PREFIX)]
    if (ann["device"] == device).any():
        ann = ann[ann["device"] == device]
    if not len(ann):
        return _empty()
    ann = ann.sort_values(["name", "time_us"], kind="stable")
    ann = ann.assign(k=ann.groupby(["name", "stage"], sort=False).cumcount())
    starts = ann[ann["stage"] == "START"][["name", "k", "time_us"]]
    ends = ann[ann["stage"] == "END"][["name", "k", "time_us"]]
    pairs = starts.merge(ends, on=["name", "k"], suffixes=("_s", "_e"))
    if not len(pairs):
        return _empty()
    ok, ph, it = _parse_labels(pairs["name"])
    df = pd.DataFrame({"phase": ph, "iteration": it, "start_us": pairs["time_us_s"].to_numpy(),
                       "end_us": pairs["time_us_e"].to_numpy()})[ok]
    return _finish(df.reset_index(drop=True), times, "annotations")


def from_user_metadata(snap: Snapshot, device: int, times: np.ndarray) -> pd.DataFrame:
    """Phases from per-entry ``user_metadata`` labels: each label's first to last entry."""
    values = snap.info.get("user_metadata_values") or []
    if not values:
        return _empty()
    ev = snap.device_events(device)
    code = ev["user_metadata"].to_numpy()
    pos = np.flatnonzero(code >= 0)
    if not len(pos):
        return _empty()
    g = pd.DataFrame({"code": code[pos], "pos": pos}).groupby("code", sort=False)["pos"].agg(["min", "max"])
    ok, ph, it = _parse_labels(pd.Series(np.asarray(values, dtype=object)[g.index.to_numpy()]))
    lo, hi = g["min"].to_numpy(), g["max"].to_numpy()
    df = pd.DataFrame({"phase": ph, "iteration": it, "start_us": times[lo], "end_us": times[hi]})[ok]
    return _finish(df.reset_index(drop=True), times, "user_metadata")


def from_meta(meta: dict[str, Any], times: np.ndarray) -> pd.DataFrame:
    """Phases from ``meta['phases']``: [{name, iteration, start_us, end_us}]."""
    rows = [p for p in (meta.get("phases") or []) if isinstance(p, dict) and "start_us" in p and "end_us" in p]
    if not rows:
        return _empty()
    df = pd.DataFrame({
        "phase": [str(p.get("name", p.get("phase", "step"))) for p in rows],
        "iteration": [int(p["iteration"]) if p.get("iteration") is not None else -1 for p in rows],
        "start_us": [float(p["start_us"]) for p in rows],
        "end_us": [float(p["end_us"]) for p in rows],
    })
    return _finish(df, times, "meta")


def estimate_period(signal: np.ndarray, min_lag: int = 2, threshold: float = 0.2) -> int | None:
    """The repeat length of ``signal`` (in samples): first autocorrelation peak above ``threshold``.

    The signal is detrended (a least-squares line) so a slow leak does not hide the period.
    """
    n = len(signal)
    if n < 2 * min_lag + 2:
        return None
    x = signal.astype(np.float64)
    t = np.arange(n, dtype=np.float64)
    x = x - np.polyval(np.polyfit(t, x, 1), t)
    if not np.any(np.abs(x) > 1e-9 * max(1.0, np.abs(signal).max())):
        return None
    f = np.fft.rfft(x, 2 * n)
    ac = np.fft.irfft(f * np.conj(f))[:n]
    ac = ac / ac[0]
    # local maxima above threshold, lag >= min_lag, at most half the signal (two repeats seen)
    lags = np.arange(1, n // 2 + 1)
    if len(lags) < 3:
        return None
    mid = ac[lags[1:-1]]
    peaks = lags[1:-1][(mid >= ac[lags[:-2]]) & (mid > ac[lags[2:]]) & (mid > threshold)]
    peaks = peaks[peaks >= min_lag]
    if not len(peaks):
        return None
    # the strongest peak among the first few (a harmonic can top the fundamental only slightly)
    best = peaks[np.argmax(ac[peaks])]
    first = peaks[0]
    return int(first if ac[first] >= 0.8 * ac[best] else best)


def _rolling_min(x: np.ndarray, w: int) -> np.ndarray:
    """Centred running minimum over a window of ``w`` samples (edges clipped)."""
    h = max(1, w // 2)
    pad = np.concatenate([np.full(h, np.inf), x, np.full(h, np.inf)])
    from numpy.lib.stride_tricks import sliding_window_view

    return sliding_window_view(pad, 2 * h + 1).min(axis=1)


def detect_iterations(rep: Replay, max_points: int = 8192) -> pd.DataFrame:
    """Iterations found in the allocated-bytes sawtooth (``source`` 'sawtooth'), or one whole-window step.

    The timeline (in event order) is bucketed to at most ``max_points`` points (per-bucket
    minimum); its period P comes from the autocorrelation; a trough is a point that is the
    minimum of the P-wide window around it and lies in the lower half of the local range (so a
    slowly growing baseline still counts). Neighbouring troughs closer than P/2 merge (the last
    one is kept: where the next rise starts). Iterations run from trough to trough.
    """
    tl = rep.timeline
    if len(tl) < 2:
        return _whole(rep)
    x = tl["allocated"].to_numpy()[1:]
    t_idx = tl["idx"].to_numpy()[1:]
    n = len(x)
    m = min(n, max_points)
    edges = np.linspace(0, n, m + 1).astype(np.int64)
    edges = np.unique(edges)
    bmin = np.minimum.reduceat(x, edges[:-1])
    bmax = np.maximum.reduceat(x, edges[:-1])
    period = estimate_period((bmin + bmax) / 2.0)
    if period is None:
        return _whole(rep)
    rmin = _rolling_min(bmin.astype(np.float64), period)
    rmax = -_rolling_min(-bmax.astype(np.float64), period)
    cand = np.flatnonzero((bmin <= rmin) & (bmin <= rmin + 0.5 * (rmax - rmin)) & (rmax > rmin))
    if len(cand) < 2:
        return _whole(rep)
    # merge candidates closer than P/2: keep the last of each group
    brk = np.diff(cand) > max(1, period // 2)
    last_of_group = cand[np.concatenate([brk, [True]])]
    # refine: in each chosen bucket, the last event with the bucket's minimum
    lo, hi = edges[last_of_group], edges[last_of_group + 1]
    ranges = [np.flatnonzero(x[a:b] == x[a:b].min())[-1] + a for a, b in zip(lo, hi)]  # one per trough
    tpos = np.asarray(ranges, dtype=np.int64)
    if len(tpos) < 2:
        return _whole(rep)
    times = tl["time_us"].to_numpy()[1:]
    df = pd.DataFrame({
        "phase": "step",
        "iteration": np.arange(len(tpos) - 1, dtype=np.int64),
        "start_us": times[tpos[:-1]],
        "end_us": times[tpos[1:]],
        "start_idx": t_idx[tpos[:-1]],
        "end_idx": t_idx[tpos[1:]],
        "source": "sawtooth",
    })
    return df[PHASE_COLUMNS]


def _whole(rep: Replay) -> pd.DataFrame:
    return pd.DataFrame({"phase": ["step"], "iteration": np.array([0], np.int64), "start_us": [rep.start_us],
                         "end_us": [rep.end_us], "start_idx": np.array([0], np.int64),
                         "end_idx": np.array([max(rep.n_events - 1, 0)], np.int64), "source": ["whole-window"]})


def find_phases(snap: Snapshot, rep: Replay, meta: dict[str, Any] | None = None) -> pd.DataFrame:
    """Phase ranges of one device's trace.

    Returns a DataFrame, one row per (phase, iteration), sorted by start:
        phase (str: forward, backward, optimizer, step, warmup, ...), iteration (int, -1 when
        the label has none), start_us, end_us (float, trace clock), start_idx, end_idx (int:
        first and last event index inside the range), source (str: annotations, user_metadata,
        meta, sawtooth or whole-window).
    """
    times = snap.device_events(rep.device)["time_us"].to_numpy()
    for df in (from_annotations(snap, rep.device, times), from_user_metadata(snap, rep.device, times),
               from_meta(meta or {}, times), from_attribution(snap, times)):
        if len(df):
            return df

    df = from_frames(snap, rep)
    return df if len(df) else detect_iterations(rep)


def from_attribution(snap: Snapshot, times: np.ndarray) -> pd.DataFrame:
    """Phases from memprof's attribution record (forward calls, backward nodes, optimizer steps)."""
    from memprof.analysis.attribution import phases as attribution_phases

    df = attribution_phases(snap)
    return _finish(df, times, "attribution") if len(df) else _empty()


def iteration_ranges(phases: pd.DataFrame) -> pd.DataFrame:
    """One row per iteration: iteration, start_us, end_us, start_idx, end_idx.

    'step' rows when present; otherwise the span of each iteration's phases. Warm-up
    phases and unnumbered phases are left out.
    """
    p = phases[(phases["iteration"] >= 0) & (phases["phase"] != "warmup")]
    steps = p[p["phase"] == "step"]
    if len(steps):
        p = steps
    g = p.groupby("iteration", sort=True).agg(start_us=("start_us", "min"), end_us=("end_us", "max"),
                                              start_idx=("start_idx", "min"), end_idx=("end_idx", "max"))
    return g.reset_index()
