"""The analysis layer: pure functions over a snapshot's DataFrames, and a facade that caches them.

    an = analyze("run.pickle")          # or analyze(snapshot, device=0, meta={...})
    an.phases, an.iterations, an.verdict, an.peak, an.fragmentation, an.allocations

Each property delegates in one line to a module function (HTA-style); the functions take the
snapshot, the replay and the metadata, so they work on any snapshot from anyone (no metadata,
no annotations) and use memprof's recorder metadata when present. No torch, plotly or dash here.
"""

from __future__ import annotations

import os
from functools import cached_property
from typing import Any

import pandas as pd

from memprof.analysis import categories as _categories
from memprof.analysis import diff as _diff
from memprof.analysis import fragmentation as _fragmentation
from memprof.analysis import peak as _peak
from memprof.analysis import phases as _phases
from memprof.analysis import sawtooth as _sawtooth
from memprof.analysis import verdict as _verdict
from memprof.analysis.diff import Diff
from memprof.analysis.peak import PeakExplanation
from memprof.analysis.verdict import Verdict
from memprof.snapshot.tables import Snapshot
from memprof.snapshot.load import load
from memprof.snapshot.meta import read_meta
from memprof.replay.timeline import Replay, replay

__all__ = ["Analysis", "analyze", "Diff", "PeakExplanation", "Verdict", "default_device"]


def default_device(snap: Snapshot) -> int:
    """The device with the most trace entries."""
    return snap.default_device()


class Analysis:
    """One device of one snapshot, analysed lazily. See the module functions for each table's columns."""

    def __init__(self, snap: Snapshot, rep: Replay, meta: dict[str, Any]) -> None:
        self.snap = snap
        self.rep = rep
        self.meta = meta

    @cached_property
    def phases(self) -> pd.DataFrame:
        return _phases.find_phases(self.snap, self.rep, self.meta)

    @cached_property
    def allocations(self) -> pd.DataFrame:
        return _categories.categorize(self.snap, self.rep, self.phases, self.meta)

    @cached_property
    def iterations(self) -> pd.DataFrame:
        return _sawtooth.iterations(self.rep, self.phases)

    @cached_property
    def leak(self) -> dict[str, Any]:
        its = self.iterations
        state = _sawtooth.first_step_state(self.allocations, its)  # AdamW's lazy state is not a leak
        return _sawtooth.leak_check(its.assign(trough_bytes=its["trough_bytes"].to_numpy() - state) if state.any() else its)

    @cached_property
    def verdict(self) -> Verdict:
        return _verdict.allocator_bound_verdict(self.rep, self.phases, self.meta, self.iterations)

    @cached_property
    def peak(self) -> PeakExplanation:
        return _peak.explain_peak(self)

    @cached_property
    def fragmentation(self) -> pd.DataFrame:
        return _fragmentation.fragmentation(self.snap, self.rep)

    @cached_property
    def oom(self) -> dict[str, Any] | None:
        return _fragmentation.oom_report(self.snap, self.rep, self.meta)

    def diff(self, other: "Analysis") -> Diff:
        """``other`` compared with this run (B - A, this run being A)."""
        return _diff.diff(self, other)


def analyze(path_or_snapshot: str | os.PathLike[str] | Snapshot, device: int | None = None,
            meta: dict[str, Any] | None = None, use_cache: bool = True) -> Analysis:
    """Load (if given a path), replay one device and wrap it for analysis.

    ``meta`` defaults to the ``.meta.json`` beside the file ({} for a Snapshot object).
    ``device`` defaults to the device with the most trace entries.
    """
    if isinstance(path_or_snapshot, Snapshot):
        snap = path_or_snapshot
        meta = meta if meta is not None else {}
    else:
        snap = load(path_or_snapshot, use_cache=use_cache)
        meta = meta if meta is not None else read_meta(path_or_snapshot)
    dev = default_device(snap) if device is None else device
    snap.check_device(dev)
    if use_cache and snap.cache_entry is not None:  # loaded through the cache (here or by the caller)
        from memprof.replay.cache import cached_replay  # replayed once per snapshot, kept with its cache

        return Analysis(snap, cached_replay(snap, dev), meta)
    return Analysis(snap, replay(snap, dev), meta)
