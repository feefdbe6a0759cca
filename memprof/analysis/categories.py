"""What each allocation is: parameter, optimizer state, gradient, activation, temporary, input.

The same categories as ``torch.profiler._memory_profiler``, inferred from lifetimes and phases
(any snapshot with phase labels) and from what the recorder knows (``meta['parameter_addrs']``
and friends: [[addr, nbytes], ...]). Rules, first match wins:

1. ``meta``: the allocation starts inside a range the recorder listed, and is alive at the end or
   has exactly that size (the allocator hands the same address out again each iteration);
2. ``phases`` (forward/backward/optimizer known):
   created and freed in the same phase of the same iteration -> temporary;
   created in forward, freed later -> activation (saved for backward);
   created in backward, alive past that backward -> gradient;
   created in the optimizer step, alive past it -> optimizer_state;
   created outside every phase and alive into one -> input;
3. ``peak-heuristic`` (only whole steps known, e.g. detected from the sawtooth; not for a single
   whole-window step, where it would say nothing): created before an iteration's peak and freed
   after it within the iteration -> activation; created and freed on one side of it -> temporary;
4. otherwise ``unknown`` (e.g. alive for the whole window with no metadata: a parameter, an input
   or optimizer state, the trace cannot tell which).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from memprof.analysis.lifetimes import lifetime_rules
from memprof.analysis.phases import FINE_PHASES, iteration_ranges
from memprof.attribution import attribute
from memprof.load import Snapshot
from memprof.replay import Replay

CATEGORIES = ("parameter", "optimizer_state", "gradient", "activation", "temporary", "input", "workspace", "unknown")
META_KEYS = {"parameter": "parameter_addrs", "optimizer_state": "optimizer_state_addrs",
             "gradient": "gradient_addrs", "input": "input_addrs"}
BEFORE, AFTER, OUTSIDE = "before_window", "after_window", "outside"
#: Phase sources that split iterations into forward / backward / optimizer.
PHASE_SOURCES = ("annotations", "user_metadata", "meta", "attribution", "frames")


def phase_of(idx: np.ndarray, phases: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(phase name, iteration) of each event index; 'outside' / -1 when in no phase.

    Uses the finest phases available (forward/backward/optimizer over step/warmup).
    """
    p = phases
    fine = p[~p["phase"].isin(["step"])]
    if len(fine):
        p = fine
    p = p.sort_values("start_idx", kind="stable")
    starts = p["start_idx"].to_numpy()
    ends = p["end_idx"].to_numpy()
    names = np.concatenate([p["phase"].to_numpy(dtype=object), np.array([OUTSIDE], dtype=object)])
    iters = np.concatenate([p["iteration"].to_numpy(), [-1]])
    j = np.searchsorted(starts, idx, side="right") - 1
    inside = (j >= 0) & (ends[np.maximum(j, 0)] >= idx) if len(starts) else np.zeros(len(idx), bool)
    k = np.where(inside, j, len(starts))
    return names[k], iters[k]


def as_categorical(labels: np.ndarray) -> pd.Categorical:
    """A few distinct strings over many rows as a categorical (categories in order of appearance).

    A plain string column of 10M rows costs seconds to build (Arrow strings) and to read back;
    codes cost a factorize.
    """
    codes, uniq = pd.factorize(np.asarray(labels, dtype=object))
    return pd.Categorical.from_codes(codes, categories=pd.Index(np.asarray(uniq, dtype=object), dtype=object))


def _meta_match(a: pd.DataFrame, ranges: Any) -> np.ndarray:
    """Allocations starting inside one of ``ranges`` ([[addr, nbytes], ...]), alive at end or of that size."""
    n = len(a)
    try:
        r = np.asarray([(int(x[0]), int(x[1])) for x in (ranges or []) if len(x) >= 2], dtype=np.int64).reshape(-1, 2)
    except (TypeError, ValueError):
        return np.zeros(n, dtype=bool)
    if not len(r) or not n:
        return np.zeros(n, dtype=bool)
    r = r[np.argsort(r[:, 0], kind="stable")]
    addr = a["addr"].to_numpy()
    j = np.searchsorted(r[:, 0], addr, side="right") - 1
    jj = np.maximum(j, 0)
    inside = (j >= 0) & (addr < r[jj, 0] + np.maximum(r[jj, 1], 1))
    exact = (addr == r[jj, 0]) & (a["size"].to_numpy() == r[jj, 1])
    return inside & (a["alive_at_end"].to_numpy() | exact)


def _iteration_peaks(rep: Replay, phases: pd.DataFrame) -> pd.DataFrame:
    """iteration, start_idx, end_idx, peak_idx (event index of each iteration's highest point)."""
    its = iteration_ranges(phases)
    tl = rep.timeline
    t_idx, x = tl["idx"].to_numpy(), tl["allocated"].to_numpy()
    lo = np.searchsorted(t_idx, its["start_idx"].to_numpy(), side="left")
    hi = np.searchsorted(t_idx, its["end_idx"].to_numpy(), side="right")
    peak = np.array([t_idx[a + int(np.argmax(x[a:b]))] if b > a else -1 for a, b in zip(lo, hi)], dtype=np.int64)
    return its.assign(peak_idx=peak)


def categorize(snap: Snapshot, rep: Replay, phases: pd.DataFrame, meta: dict[str, Any] | None = None) -> pd.DataFrame:
    """Replay allocations with what each one is and when it was made.

    Returns ``rep.allocations`` (addr, size, stream, stack_id, alloc_idx, free_idx, alloc_us,
    free_us, alive_at_start, alive_at_end, source) plus:
        phase (str: phase at allocation; 'before_window' when alive before the trace, 'outside'
        when between phases), iteration (int, -1 when none), free_phase (str: phase at the free;
        'after_window' when still alive), free_iteration, category (one of :data:`CATEGORIES`),
        category_source ('meta', 'phases', 'peak-heuristic' or 'none'), site (innermost user
        frame, 'file.py:line:function'), lifetime_us (float; NaN when alive before or after the window).
    """
    meta = meta or {}
    a = rep.allocations.copy(deep=False)  # copy-on-write (pandas 3): columns are added, never changed in place
    ai = a["alloc_idx"].to_numpy()
    fi = a["free_idx"].to_numpy()
    ph, it = phase_of(ai, phases)
    fph, fit = phase_of(fi, phases)
    ph = np.where(ai < 0, BEFORE, ph).astype(object)
    it = np.where(ai < 0, -1, it)
    fph = np.where(fi < 0, AFTER, fph).astype(object)
    fit = np.where(fi < 0, -1, fit)
    n = len(a)
    cat = np.full(n, "unknown", dtype=object)
    src = np.full(n, "none", dtype=object)

    fine = phases["phase"].isin(FINE_PHASES).any() and phases["source"].isin(PHASE_SOURCES).any()
    if fine:
        same = (ph == fph) & (it == fit) & (ai >= 0) & (fi >= 0) & (ph != OUTSIDE)
        rules = [
            (same, "temporary"),
            ((ph == "forward") & ~same, "activation"),
            ((ph == "backward") & ~same, "gradient"),
            ((ph == "optimizer") & ~same, "optimizer_state"),
        ]
        # inputs: made between phases, still alive when a phase starts
        p = phases[phases["phase"].isin(FINE_PHASES)]
        starts = np.sort(p["start_idx"].to_numpy())
        nxt = np.searchsorted(starts, ai, side="right")
        next_start = np.where(nxt < len(starts), starts[np.minimum(nxt, len(starts) - 1)], np.iinfo(np.int64).max)
        rules.append(((ph == OUTSIDE) & ((fi < 0) | (fi > next_start)) & (nxt < len(starts)), "input"))
        for mask, name in reversed(rules):  # first rule wins: apply in reverse
            cat[mask] = name
            src[mask] = "phases"
    elif len(phases) and rep.n_events and not (phases["source"] == "whole-window").all():
        pk = _iteration_peaks(rep, phases)
        s, e, pidx = pk["start_idx"].to_numpy(), pk["end_idx"].to_numpy(), pk["peak_idx"].to_numpy()
        j = np.searchsorted(s, ai, side="right") - 1
        jj = np.maximum(j, 0)
        in_it = (j >= 0) & (ai >= 0) & (ai <= e[jj])
        freed_in = in_it & (fi >= 0) & (fi <= e[jj])
        before = ai <= pidx[jj]
        after_free = fi > pidx[jj]
        act = freed_in & before & after_free
        tmp = freed_in & ~act
        cat[act], src[act] = "activation", "peak-heuristic"
        cat[tmp], src[tmp] = "temporary", "peak-heuristic"

    for name in ("input", "gradient", "optimizer_state", "parameter"):  # parameter wins over the rest
        m = _meta_match(a, meta.get(META_KEYS[name]))
        cat[m], src[m] = name, "meta"

    knows = any(meta.get(k) for k in META_KEYS.values()) or bool((snap.info or {}).get("attribution"))
    lifetime_rules(snap, a, ph, fph, cat, src, it, fit, recorder_knows=knows)  # what phases and meta left unknown
    names = attribute(snap, a)
    named = (names["name_category"] != "").to_numpy()
    cat[named] = names["name_category"].to_numpy()[named]
    src[named] = "name"

    a["phase"] = as_categorical(ph)
    a["iteration"] = it.astype(np.int64)
    a["free_phase"] = as_categorical(fph)
    a["free_iteration"] = fit.astype(np.int64)
    a["category"] = as_categorical(cat).set_categories(list(CATEGORIES))
    a["category_source"] = as_categorical(src)
    site = snap.site_categorical(a["stack_id"].to_numpy(), a["alloc_idx"].to_numpy())
    site_file = snap.site_files(a["stack_id"].to_numpy())
    bw = (names["fwd_site"] != "").to_numpy()
    if bw.any():  # backward: the user's forward line that made the node
        labels = np.asarray(site, dtype=object)
        labels[bw] = names["fwd_site"].to_numpy()[bw]
        site_file[bw] = names["fwd_site_file"].to_numpy()[bw]
        site = as_categorical(labels)
    a["site"] = site
    a["site_file"] = site_file
    a["name"] = names["name"].to_numpy()
    a["module"] = names["module"].to_numpy()
    a["context"] = names["context"].to_numpy()
    a["lifetime_us"] = a["free_us"] - a["alloc_us"]  # (site_categorical labels frameless blocks from before the window)
    return a
