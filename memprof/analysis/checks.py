"""Memory limits and regression checks: ``memprof check`` and the pytest marker share this module.

What is checked, per snapshot (or per rank of a run folder):

* peak allocated: the CUDA caching allocator's own counter (``torch.cuda.max_memory_allocated``
  over the recorded window, kept in the ``.meta.json`` by memprof's CUDA recorder) when the
  snapshot has one, otherwise the replay of the recorded history (:mod:`memprof.replay.timeline`, the
  same numbers PyTorch's memory_viz draws);
* peak reserved: likewise (``torch.cuda.max_memory_reserved``, else the replayed segments).

A baseline comparison uses the same source on both sides (the replay when either side lacks the
allocator counter). The explanation of a failure comes from the recorded history: what is alive
at the peak by category and by source line (:mod:`memprof.analysis.peak`), or, against a
baseline, what grew (:mod:`memprof.analysis.diff`).

A *run* is a folder of snapshots, one per rank (``RUN/rank{R}.pickle.gz``, or any snapshot files):
limits apply to every rank, and ranks are matched to the baseline's by name.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memprof.errors import MemprofError
from memprof.units import fmt_bytes

if TYPE_CHECKING:
    from memprof.analysis import Analysis

def parse_percent(text: str | float) -> float:
    """A fraction from ``"5%"``, ``"5"`` (percent) or ``"2.5 %"``: 0.05, 0.05, 0.025."""
    s = str(text).strip().rstrip("%").strip()
    try:
        v = float(s)
    except ValueError:
        raise MemprofError(f"not a percentage: {text!r} (use e.g. 5%)") from None
    if not v >= 0 or v == float("inf"):
        raise MemprofError(f"not a percentage: {text!r} (use e.g. 5%)")
    return v / 100.0


# -- what a run is ----------------------------------------------------------------------

_SNAPSHOT_SUFFIXES = (".pickle", ".pickle.gz", ".pkl", ".pkl.gz", ".json", ".json.gz")
_RANK_RE = re.compile(r"rank[_-]?(\d+)", re.IGNORECASE)


def _is_snapshot_name(name: str) -> bool:
    return name.endswith(_SNAPSHOT_SUFFIXES) and ".meta.json" not in name and name != "results.json"


def label_of(path: Path) -> str:
    """``rank3`` for ``rank3.pickle.gz`` (any name holding ``rank<N>``), else the file name."""
    m = _RANK_RE.search(path.name)
    return f"rank{int(m.group(1))}" if m else path.name


def run_files(path: str | os.PathLike[str]) -> list[tuple[str, Path]]:
    """(label, file) of each snapshot of a snapshot file or a run folder, ranks in numeric order.

    A folder's own snapshot files are used; when it has none, those in its subfolders.
    """
    p = Path(path)
    if p.is_file():
        return [(label_of(p), p)]
    if not p.is_dir():
        raise MemprofError(f"{path}: no such file or folder")
    files = sorted(f for f in p.iterdir() if f.is_file() and _is_snapshot_name(f.name))
    if not files:
        files = sorted(f for f in p.rglob("*") if f.is_file() and _is_snapshot_name(f.name))
    if not files:
        raise MemprofError(f"{path}: no snapshot files in this folder")

    def key(f: Path) -> tuple[int, int, str]:
        m = _RANK_RE.search(f.name)
        return (0, int(m.group(1)), f.name) if m else (1, 0, f.name)

    out = [(label_of(f), f) for f in sorted(files, key=key)]
    labels = [lab for lab, _ in out]
    if len(set(labels)) != len(labels):  # two files of one rank (e.g. rank0.pickle and rank0.pickle.gz): use names
        out = [(f.name, f) for _, f in out]
    return out


# -- measuring ---------------------------------------------------------------------------

@dataclass
class Measurement:
    """The peaks of one snapshot (one device), and the analysis they came from."""

    label: str
    path: str
    device: int
    allocated_bytes: int
    reserved_bytes: int
    source: str  # "allocator counter" or "recorded history"
    replay_allocated_bytes: int
    replay_reserved_bytes: int
    analysis: "Analysis | None" = field(repr=False)
    meta: dict[str, Any] = field(default_factory=dict, repr=False)

    def on(self, source: str) -> tuple[int, int]:
        """(allocated, reserved) from ``source``."""
        if source == self.source:
            return self.allocated_bytes, self.reserved_bytes
        return self.replay_allocated_bytes, self.replay_reserved_bytes


def measure(label: str, path: str | os.PathLike[str], device: int | None = None, use_cache: bool = True) -> Measurement:
    from memprof.analysis import analyze

    an = analyze(path, device=device, use_cache=use_cache)
    rep, meta = an.rep, an.meta
    ra, rr = int(rep.peak_bytes), int(rep.peak_reserved_bytes)
    rec, dev = meta.get("record"), meta.get("device")
    rec = rec if isinstance(rec, dict) else {}
    pa, pr = meta.get("peak_allocated_bytes"), meta.get("peak_reserved_bytes")
    dev = dev if isinstance(dev, dict) else {}
    if (rec.get("backend") == "cuda" and type(pa) is int and type(pr) is int  # noqa: E721 - not bool
            and rep.device == (dev.get("index") or 0)):  # the counter is of the recorded device only
        return Measurement(label, str(path), rep.device, int(pa), int(pr), "allocator counter", ra, rr, an, meta)
    return Measurement(label, str(path), rep.device, ra, rr, "recorded history", ra, rr, an, meta)


# -- checking ----------------------------------------------------------------------------

@dataclass
class Limits:
    max_allocated: int | None = None
    max_reserved: int | None = None
    max_regression: float | None = None  # a fraction: 0.05 for 5%


@dataclass
class Result:
    """One snapshot checked: the rows of ``checks`` are {check, value, limit, ok}; ``why`` explains a failure."""

    m: Measurement
    checks: list[dict[str, Any]]
    why: str = ""
    baseline: Measurement | None = None

    @property
    def ok(self) -> bool:
        return all(c["ok"] for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "label": self.m.label, "snapshot": self.m.path, "device": self.m.device, "ok": self.ok, "source": self.m.source,
            "peak_allocated_bytes": self.m.allocated_bytes, "peak_reserved_bytes": self.m.reserved_bytes,
            "replay_peak_allocated_bytes": self.m.replay_allocated_bytes,
            "replay_peak_reserved_bytes": self.m.replay_reserved_bytes,
            "checks": self.checks, "explanation": self.why,
        }
        if self.baseline is not None:
            d["baseline"] = {"snapshot": self.baseline.path, "peak_allocated_bytes": self.baseline.allocated_bytes,
                             "peak_reserved_bytes": self.baseline.reserved_bytes, "source": self.baseline.source}
        return d


def _at_peak(an: "Analysis", top: int) -> str:
    p = an.peak
    cats = [f"{c} {fmt_bytes(b)}" for c, b in zip(p.by_category["category"], p.by_category["bytes"]) if b > 0][:top]
    sites = [f"{s} {fmt_bytes(b)}" for s, b in zip(p.by_site["site"], p.by_site["bytes"])][:top]
    out = ""
    if cats:
        out += f" At the peak: {', '.join(cats)}."
    if sites:
        out += f" Largest sites alive then: {'; '.join(sites)}."
    return out


def _signed(n: int) -> str:
    return ("+" if n > 0 else "") + fmt_bytes(n)


def _grew(base: "Analysis", an: "Analysis", top: int) -> str:
    d = base.diff(an)
    cats = d.by_category[d.by_category["delta"] != 0].sort_values("delta", ascending=False, kind="stable")
    grew = [f"{c} {_signed(int(x))} ({fmt_bytes(int(a))} -> {fmt_bytes(int(b))})"
            for c, a, b, x in cats[["category", "a_bytes", "b_bytes", "delta"]].itertuples(index=False) if x > 0][:top]
    sites = d.by_site[d.by_site["delta"] > 0].sort_values("delta", ascending=False, kind="stable")
    sg = [f"{s} {_signed(int(x))} ({st})" for s, x, st in sites[["site", "delta", "status"]].itertuples(index=False)][:top]
    out = ""
    if grew:
        out += f" What grew at the peak, by category: {', '.join(grew)}."
    if sg:
        out += f" By source line: {'; '.join(sg)}."
    if not grew and not sg:
        out += " The bytes alive at the peak did not grow by category or source line (the peak moved, or reserved memory grew: caching or fragmentation)."
    return out


def check_one(m: Measurement, limits: Limits, baseline: Measurement | None = None, top: int = 3) -> Result:
    """Apply ``limits`` to one measurement (and compare with ``baseline`` when given)."""
    checks: list[dict[str, Any]] = []
    fails: list[str] = []
    if limits.max_allocated is not None:
        ok = m.allocated_bytes <= limits.max_allocated
        checks.append({"check": "max_allocated", "value": m.allocated_bytes, "limit": limits.max_allocated, "ok": ok})
        if not ok:
            over = m.allocated_bytes - limits.max_allocated
            fails.append(f"peak allocated {fmt_bytes(m.allocated_bytes)} ({m.allocated_bytes:,} B, {m.source}) exceeds "
                         f"--max-allocated {fmt_bytes(limits.max_allocated)} by {fmt_bytes(over)}")
    if limits.max_reserved is not None:
        ok = m.reserved_bytes <= limits.max_reserved
        checks.append({"check": "max_reserved", "value": m.reserved_bytes, "limit": limits.max_reserved, "ok": ok})
        if not ok:
            fails.append(f"peak reserved {fmt_bytes(m.reserved_bytes)} ({m.source}) exceeds --max-reserved "
                         f"{fmt_bytes(limits.max_reserved)} by {fmt_bytes(m.reserved_bytes - limits.max_reserved)}")
    grew = False
    if baseline is not None and limits.max_regression is not None:
        src = m.source if m.source == baseline.source else "recorded history"
        (a, r), (ba, br) = m.on(src), baseline.on(src)
        for name, v, b in (("allocated", a, ba), ("reserved", r, br)):
            lim = int(b * (1.0 + limits.max_regression))
            ok = v <= lim
            checks.append({"check": f"regression_{name}", "value": v, "baseline": b, "limit": lim,
                           "change": (v - b) / b if b else None, "ok": ok})
            if not ok:
                grew = True
                rel = f"{(v - b) / b:+.1%}" if b else "from nothing"
                fails.append(f"peak {name} {fmt_bytes(v)} is {rel} over the baseline's {fmt_bytes(b)} "
                             f"(allowed +{limits.max_regression:.1%}; {src})")
    why = ""
    if fails:
        why = f"{m.label} ({m.path}): " + "; ".join(fails) + "."
        assert m.analysis is not None  # measure() always sets it (only the pytest plugin's own measurements lack one)
        if grew and baseline is not None:
            assert baseline.analysis is not None
            why += _grew(baseline.analysis, m.analysis, top)
        else:
            why += _at_peak(m.analysis, top)
    return Result(m, checks, why, baseline)


def check(target: str | os.PathLike[str], limits: Limits, baseline: str | os.PathLike[str] | None = None,
          device: int | None = None, top: int = 3, use_cache: bool = True) -> list[Result]:
    """Check a snapshot or every rank of a run folder; ``baseline`` a snapshot (for every rank) or a run (matched by rank)."""
    files = run_files(target)
    base: dict[str, Path] = {}
    if baseline is not None:
        bf = run_files(baseline)
        if Path(baseline).is_file():
            base = {lab: bf[0][1] for lab, _ in files}
        else:
            base = dict(bf)
            missing = [lab for lab, _ in files if lab not in base]
            if missing:
                raise MemprofError(f"{baseline}: the baseline has no {', '.join(missing)} (it has {', '.join(base) or 'nothing'})")
    out = []
    for lab, f in files:
        m = measure(lab, f, device, use_cache)
        bm = measure(lab, base[lab], device, use_cache) if lab in base else None
        out.append(check_one(m, limits, bm, top))
    return out
