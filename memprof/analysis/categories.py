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

from memprof.analysis.codes import CAT, CATEGORIES, SOURCES, SRC
from memprof.analysis.lifetimes import lifetime_rules
from memprof.analysis.phases import FINE_PHASES, iteration_ranges
from memprof.analysis import labels
from memprof.analysis.attribution import attribute
from memprof.snapshot.tables import Snapshot
from memprof.replay.timeline import Replay

META_KEYS = {"parameter": "parameter_addrs", "optimizer_state": "optimizer_state_addrs",
             "gradient": "gradient_addrs", "input": "input_addrs"}
BEFORE, AFTER, OUTSIDE = "before_window", "after_window", "outside"
#: Phase sources that split iterations into forward / backward / optimizer.
PHASE_SOURCES = ("annotations", "user_metadata", "meta", "attribution", "frames")


class PhaseCodes:
    """Phase labels of many event indices as codes into ``labels`` (compare with :meth:`is_`)."""

    def __init__(self, codes: np.ndarray, labels: list[str]) -> None:
        self.codes, self.labels = codes, labels

    def code(self, name: str) -> int:
        return self.labels.index(name) if name in self.labels else -2

    def is_(self, name: str) -> np.ndarray:
        return self.codes == self.code(name)

    def categorical(self) -> pd.Categorical:
        return labels.from_codes(self.codes, self.labels)


def phase_of(idx: np.ndarray, phases: pd.DataFrame, labels_: list[str] | None = None) -> tuple[PhaseCodes, np.ndarray]:
    """(phase of each event index, iteration); 'outside' / -1 when in no phase.

    Uses the finest phases available (forward/backward/optimizer over step/warmup). ``labels_``:
    the label list to code into (shared between calls so that codes compare across them).
    """
    p = phases
    fine = p[~p["phase"].isin(["step"])]
    if len(fine):
        p = fine
    p = p.sort_values("start_idx", kind="stable")
    starts = p["start_idx"].to_numpy()
    ends = p["end_idx"].to_numpy()
    lab = labels_ if labels_ is not None else [OUTSIDE, BEFORE, AFTER]
    row_code = []
    for name in p["phase"].to_numpy(dtype=object):
        name = str(name)
        if name not in lab:
            lab.append(name)
        row_code.append(lab.index(name))
    codes = np.asarray(row_code + [lab.index(OUTSIDE)], dtype=np.int64)
    iters = np.concatenate([p["iteration"].to_numpy(), [-1]])
    j = np.searchsorted(starts, idx, side="right") - 1
    inside = (j >= 0) & (ends[np.maximum(j, 0)] >= idx) if len(starts) else np.zeros(len(idx), bool)
    k = np.where(inside, j, len(starts))
    return PhaseCodes(codes[k], lab), iters[k]


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
    lab = [OUTSIDE, BEFORE, AFTER]
    ph, it = phase_of(ai, phases, lab)
    fph, fit = phase_of(fi, phases, lab)  # the same label list: codes compare across ph and fph
    ph.codes = np.where(ai < 0, lab.index(BEFORE), ph.codes)
    it = np.where(ai < 0, -1, it)
    fph.codes = np.where(fi < 0, lab.index(AFTER), fph.codes)
    fit = np.where(fi < 0, -1, fit)
    n = len(a)
    cat = np.full(n, CAT["unknown"], dtype=np.int8)
    src = np.full(n, SRC["none"], dtype=np.int8)

    fine = phases["phase"].isin(FINE_PHASES).any() and phases["source"].isin(PHASE_SOURCES).any()
    if fine:
        same = (ph.codes == fph.codes) & (it == fit) & (ai >= 0) & (fi >= 0) & ~ph.is_(OUTSIDE)
        rules = [
            (same, "temporary"),
            (ph.is_("forward") & ~same, "activation"),
            (ph.is_("backward") & ~same, "gradient"),
            (ph.is_("optimizer") & ~same, "optimizer_state"),
        ]
        # inputs: made between phases, still alive when a phase starts
        p = phases[phases["phase"].isin(FINE_PHASES)]
        starts = np.sort(p["start_idx"].to_numpy())
        nxt = np.searchsorted(starts, ai, side="right")
        next_start = np.where(nxt < len(starts), starts[np.minimum(nxt, len(starts) - 1)], np.iinfo(np.int64).max)
        rules.append((ph.is_(OUTSIDE) & ((fi < 0) | (fi > next_start)) & (nxt < len(starts)), "input"))
        for mask, name in reversed(rules):  # first rule wins: apply in reverse
            cat[mask] = CAT[name]
            src[mask] = SRC["phases"]
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
        cat[act], src[act] = CAT["activation"], SRC["peak-heuristic"]
        cat[tmp], src[tmp] = CAT["temporary"], SRC["peak-heuristic"]

    for name in ("input", "gradient", "optimizer_state", "parameter"):  # parameter wins over the rest
        m = _meta_match(a, meta.get(META_KEYS[name]))
        cat[m], src[m] = CAT[name], SRC["meta"]

    knows = any(meta.get(k) for k in META_KEYS.values()) or bool((snap.info or {}).get("attribution"))
    lifetime_rules(snap, a, ph, fph, cat, src, it, fit, recorder_knows=knows)  # what phases and meta left unknown
    names = attribute(snap, a)
    nc = names["name_category"].array
    ncode = np.array([CAT.get(str(c), -1) for c in nc.categories], dtype=np.int64)[np.asarray(nc.codes)] \
        if len(nc.categories) else np.full(n, -1, dtype=np.int64)
    named = ncode >= 0  # '' (unnamed) is no category
    cat[named] = ncode[named]
    src[named] = SRC["name"]

    a["phase"] = ph.categorical()
    a["iteration"] = it.astype(np.int64)
    a["free_phase"] = fph.categorical()
    a["free_iteration"] = fit.astype(np.int64)
    a["category"] = labels.from_codes(cat, CATEGORIES, drop_unused=False)
    a["category_source"] = labels.from_codes(src, SOURCES)
    site = snap.site_categorical(a["stack_id"].to_numpy(), a["alloc_idx"].to_numpy())
    site_file = snap.site_files(a["stack_id"].to_numpy())
    fs = names["fwd_site"].array
    bw = np.asarray(fs.codes) != (list(fs.categories).index("") if "" in fs.categories else -2)
    if bw.any():  # backward: the user's forward line that made the node
        site = labels.overlay(site, fs, bw)
        site_file = labels.overlay(site_file, names["fwd_site_file"].array, bw)
    a["site"] = site
    a["site_file"] = site_file
    a["name"] = names["name"]
    a["module"] = names["module"]
    a["context"] = names["context"]
    a["lifetime_us"] = a["free_us"] - a["alloc_us"]  # (site_categorical labels frameless blocks from before the window)
    return a
