"""What the timeline, the tables and the report show, as plain arrays and DataFrames.

This sits between the analysis layer and :mod:`memprof.present.figures`: it turns a snapshot, its
replay and its metadata into a :class:`TimelineModel` (times in ms since the trace start) and
answers the questions a view asks for a visible x-range: the min/max-reduced step curves
(:func:`step_view`) and the stacked per-allocation polygons of the largest allocations
(:func:`stacked_polygons`, as PyTorch's memory_viz draws them). No plotting here.

Categories, phases, the verdict and the analytic account are :mod:`memprof.analysis`'s (one
definition of each, shared with the CLI); this module only arranges them for a view.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from memprof.analysis import labels
from memprof.replay.downsample import DEFAULT_BUCKETS, minmax_step
from memprof.snapshot.tables import Snapshot
from memprof.replay.timeline import Replay

if TYPE_CHECKING:
    from memprof.analysis import Analysis

#: Categories in drawing order, with the fallback colours the figures use.
CATEGORIES: tuple[str, ...] = (
    "parameter", "gradient", "optimizer_state", "input", "activation", "temporary", "alive_before_window", "other",
)


def phase_of(times_us: np.ndarray, phases: pd.DataFrame) -> np.ndarray:
    """The phase name in force at each time ('' outside every phase)."""
    out = np.full(len(times_us), "", dtype=object)
    if not len(phases):
        return out
    st = phases["start_us"].to_numpy()
    en = phases["end_us"].to_numpy()
    k = np.searchsorted(st, times_us, side="right") - 1
    ok = (k >= 0) & ~np.isnan(times_us)
    kk = np.clip(k, 0, len(st) - 1)
    ok &= times_us <= en[kk]
    out[ok] = phases["phase"].to_numpy()[kk[ok]]
    return out


@dataclass
class TimelineModel:
    """Everything the timeline and the tables show for one (file, device).

    ``allocs`` — one row per allocation, in replay order: size, t0_ms, t1_ms (alloc/free in
        ms since start; the window's ends when unknown), lifetime_us, category, phase (of the
        alloc), site (innermost user frame), stack_id, alloc_idx, free_idx, alive_at_end, addr
        (the block's address, -1 when unknown), stream (the CUDA stream it was allocated on),
        name (tensor name, '' when unnamed), module (module path, '' when unknown).
    ``phases`` — phase, iteration, start_ms, end_ms.
    ``iterations`` — iteration, peak_bytes, peak_ms, start_ms, end_ms.
    """

    source: str
    device: int
    start_us: float
    end_ms: float
    t_alloc: np.ndarray
    allocated: np.ndarray
    t_res: np.ndarray
    reserved: np.ndarray
    allocs: pd.DataFrame
    phases: pd.DataFrame
    iterations: pd.DataFrame
    peak_bytes: int
    peak_ms: float
    peak_reserved_bytes: int
    oom_ms: np.ndarray
    snap: Snapshot
    rep: Replay
    meta: dict[str, Any]
    analysis: "Analysis"
    #: derived indexes built on first use (e.g. the category bands'), kept with the model
    cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


def _labels(col: pd.Series) -> Any:
    """A label column as it is when categorical (codes: no per-row strings built), else as str."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        return col.array
    return col.astype(str).to_numpy()


def build_model(snap: Snapshot, rep: Replay, meta: dict[str, Any], analysis: "Analysis") -> TimelineModel:
    """Assemble the :class:`TimelineModel` from a :func:`memprof.analysis.analyze` result."""
    t0 = rep.start_us
    a = rep.allocations
    ph = analysis.phases[["phase", "iteration", "start_us", "end_us"]].copy()
    al = analysis.allocations
    cat = _labels(al["category"])
    phase = _labels(al["phase"]) if "phase" in al else phase_of(a["alloc_us"].to_numpy(), ph)
    site = _labels(al["site"]) if "site" in al else snap.site_labels(a["stack_id"].to_numpy())
    names = {c: _labels(al[c]) for c in ("name", "module") if c in al}
    end_ms = (rep.end_us - t0) / 1000.0
    au = a["alloc_us"].to_numpy()
    fu = a["free_us"].to_numpy()
    allocs = pd.DataFrame(
        {
            "size": a["size"].to_numpy(),
            "t0_ms": np.where(np.isnan(au), 0.0, (au - t0) / 1000.0),
            "t1_ms": np.where(np.isnan(fu), end_ms, (fu - t0) / 1000.0),
            "lifetime_us": np.where(np.isnan(au) | np.isnan(fu), np.nan, fu - au),
            "category": cat,
            "phase": phase,
            "site": site,
            "stack_id": a["stack_id"].to_numpy(),
            "alloc_idx": a["alloc_idx"].to_numpy(),
            "free_idx": a["free_idx"].to_numpy(),
            "alive_at_end": a["alive_at_end"].to_numpy(),
            "addr": a["addr"].to_numpy() if "addr" in a else np.full(len(a), -1, np.int64),
            "stream": a["stream"].to_numpy() if "stream" in a else np.zeros(len(a), np.int64),
            "name": names["name"] if "name" in names else labels.constant(len(a)),
            "module": names["module"] if "module" in names else labels.constant(len(a)),
        },
        copy=False,  # no consolidation copy of millions of rows (columns are never changed in place)
    )
    phases = pd.DataFrame(
        {
            "phase": ph["phase"].astype(str).to_numpy(),
            "iteration": ph["iteration"].to_numpy(),
            "start_ms": (ph["start_us"].to_numpy(dtype=float) - t0) / 1000.0,
            "end_ms": (ph["end_us"].to_numpy(dtype=float) - t0) / 1000.0,
        }
    )
    tl = rep.timeline
    t_alloc = (tl["time_us"].to_numpy() - t0) / 1000.0
    allocated = tl["allocated"].to_numpy()
    iters = iteration_peaks(t_alloc, allocated, phases)
    return TimelineModel(
        source=snap.source, device=rep.device, start_us=t0, end_ms=end_ms,
        t_alloc=t_alloc, allocated=allocated,
        t_res=(rep.reserved["time_us"].to_numpy() - t0) / 1000.0, reserved=rep.reserved["reserved"].to_numpy(),
        allocs=allocs, phases=phases, iterations=iters,
        peak_bytes=int(rep.peak_bytes), peak_ms=(rep.peak_time_us - t0) / 1000.0,
        peak_reserved_bytes=int(rep.peak_reserved_bytes),
        oom_ms=(rep.oom_events["time_us"].to_numpy(dtype=float) - t0) / 1000.0,
        snap=snap, rep=rep, meta=meta, analysis=analysis,
    )


def iteration_peaks(t_ms: np.ndarray, allocated: np.ndarray, phases: pd.DataFrame) -> pd.DataFrame:
    """Per-iteration peak of allocated bytes.

    Columns: iteration, start_ms, end_ms, peak_bytes, peak_ms, ramp_ms (from the iteration's
    start to its peak).
    """
    cols = ["iteration", "start_ms", "end_ms", "peak_bytes", "peak_ms", "ramp_ms"]
    ph = phases[phases["iteration"] >= 0]
    if not len(ph) or not len(t_ms):
        return pd.DataFrame(columns=cols)
    g = ph.groupby("iteration", sort=True).agg(start_ms=("start_ms", "min"), end_ms=("end_ms", "max")).reset_index()
    rows = []
    for it, s, e in zip(g["iteration"], g["start_ms"], g["end_ms"]):
        lo = max(int(np.searchsorted(t_ms, s, side="right")) - 1, 0)
        hi = int(np.searchsorted(t_ms, e, side="right"))
        if hi <= lo:
            continue
        k = lo + int(np.argmax(allocated[lo:hi]))
        rows.append((int(it), float(s), float(e), int(allocated[k]), float(max(t_ms[k], s)), float(max(t_ms[k], s) - s)))
    return pd.DataFrame(rows, columns=cols)


def step_view(x: np.ndarray, y: np.ndarray, x0: float | None, x1: float | None, n_buckets: int = DEFAULT_BUCKETS) -> tuple[np.ndarray, np.ndarray]:
    """The min/max-reduced step curve over the visible range, ending at the range's right edge."""
    from memprof.replay.pyramid import for_curve

    idx = minmax_step(x, y, x0, x1, n_buckets, levels=for_curve(y) if len(y) > PYRAMID_FROM else None)
    return x[idx], y[idx]


#: Curves longer than this are reduced through a min/max pyramid (built once per curve).
PYRAMID_FROM = 200_000


@dataclass
class Polygon:
    """One allocation's band in the stacked view: its row in ``allocs`` and the outline."""

    row: int
    category: str
    size: int
    xs: np.ndarray
    ys: np.ndarray


def stacked_polygons(model: TimelineModel, x0: float | None = None, x1: float | None = None, k: int = 100) -> tuple[list[Polygon], np.ndarray, np.ndarray]:
    """The ``k`` largest allocations alive in ``[x0, x1]``, stacked in allocation order.

    As memory_viz does: each allocation sits on top of those allocated before it that are still
    alive; when one below is freed, everything above slides down. Returns the polygons and the
    step curve (x, y) of their summed height (the rest of allocated memory is drawn above it).
    """
    al = model.allocs
    lo = 0.0 if x0 is None else float(x0)
    hi = model.end_ms if x1 is None else float(x1)
    t0 = al["t0_ms"].to_numpy()
    t1 = al["t1_ms"].to_numpy()
    size = al["size"].to_numpy()
    vis = np.flatnonzero((t0 <= hi) & (t1 >= lo) & (size > 0))
    if len(vis) > k:
        vis = vis[np.argpartition(-size[vis], k - 1)[:k]]
    vis = np.sort(vis)  # allocation order (allocs are sorted by alloc_idx)
    if not len(vis):
        return [], np.array([lo, hi]), np.array([0, 0])
    a0 = np.clip(t0[vis], lo, hi)
    a1 = np.clip(t1[vis], lo, hi)
    sz = size[vis]
    m = len(vis)
    # Events: (time, kind 0=free first at equal times, position)
    ev_t = np.concatenate([a1, a0])
    ev_kind = np.concatenate([np.zeros(m, np.int8), np.ones(m, np.int8)])
    ev_pos = np.concatenate([np.arange(m), np.arange(m)])
    order = np.lexsort((ev_pos, ev_kind, ev_t))
    alive = np.zeros(m, dtype=bool)
    offset = np.zeros(m, dtype=np.int64)
    changes: list[list[tuple[float, int]]] = [[] for _ in range(m)]
    total_t: list[float] = [lo]
    total_y: list[int] = [0]
    cur = 0
    for e in order:
        t, kind, p = float(ev_t[e]), ev_kind[e], int(ev_pos[e])
        if kind == 1:
            below = alive[:p]
            offset[p] = int(sz[:p][below].sum())
            alive[p] = True
            changes[p].append((t, int(offset[p])))
            cur += int(sz[p])
        else:
            alive[p] = False
            changes[p].append((t, -1))
            above = np.flatnonzero(alive[p + 1:]) + p + 1
            for q in above:
                offset[q] -= int(sz[p])
                changes[q].append((t, int(offset[q])))
            cur -= int(sz[p])
        total_t.append(t)
        total_y.append(cur)
    polys = []
    cats = al["category"].array  # read per drawn polygon only (a categorical: no per-row strings)
    for i in range(m):
        ch = changes[i]
        xs_top: list[float] = []
        ys_top: list[int] = []
        xs_bot: list[float] = []
        ys_bot: list[int] = []
        prev_off = None
        for t, off in ch:
            if off < 0:
                off_end = prev_off if prev_off is not None else 0
                xs_top.append(t); ys_top.append(off_end + int(sz[i]))
                xs_bot.append(t); ys_bot.append(off_end)
                break
            if prev_off is not None:
                xs_top.append(t); ys_top.append(prev_off + int(sz[i]))
                xs_bot.append(t); ys_bot.append(prev_off)
            xs_top.append(t); ys_top.append(off + int(sz[i]))
            xs_bot.append(t); ys_bot.append(off)
            prev_off = off
        xs = np.array(xs_top + xs_bot[::-1] + xs_top[:1], dtype=float)
        ys = np.array(ys_top + ys_bot[::-1] + ys_top[:1], dtype=np.int64)
        polys.append(Polygon(row=int(vis[i]), category=str(cats[vis[i]]), size=int(sz[i]), xs=xs, ys=ys))
    if total_t[-1] < hi:
        total_t.append(hi)  # hold the last height to the right edge, so the fill above it closes there
        total_y.append(cur)
    return polys, np.array(total_t), np.array(total_y)


def alive_bytes_at(t0: np.ndarray, t1: np.ndarray, size: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Sum of ``size`` over the intervals ``[t0, t1)`` that contain each time in ``at`` (vectorised)."""
    if not len(size):
        return np.zeros(len(at), dtype=np.int64)
    o0, o1 = np.argsort(t0, kind="stable"), np.argsort(t1, kind="stable")
    c0 = np.concatenate([[0], np.cumsum(size[o0])])
    c1 = np.concatenate([[0], np.cumsum(size[o1])])
    return c0[np.searchsorted(t0[o0], at, side="right")] - c1[np.searchsorted(t1[o1], at, side="right")]


@dataclass
class Band:
    """The bytes of one category below the detail limit, stacked: ``y0`` (bottom) to ``y1`` (top) at ``x``."""

    category: str
    x: np.ndarray
    y0: np.ndarray
    y1: np.ndarray
    count: int
    top_names: list[str]


def category_bands(model: TimelineModel, x: np.ndarray, drawn: np.ndarray) -> list[Band]:
    """Per-category bands of every allocation not drawn on its own (``drawn``: rows of ``allocs``).

    At each time in ``x`` (ms) the bands sit on top of the drawn allocations and of each other in
    :data:`CATEGORIES` order; with the drawn ones they add up to the allocated bytes (up to
    allocations made and freed in the same microsecond). ``top_names`` are the largest names,
    modules or sites in the band, for its hover text.
    """
    ix = _band_index(model)
    x = np.asarray(x, dtype=np.float64)
    xs, xe = (float(x[0]), float(x[-1])) if len(x) else (0.0, 0.0)
    drawn = np.unique(np.asarray(drawn, dtype=np.int64))
    drawn = drawn[ix.size[drawn] > 0] if len(drawn) else drawn
    is_drawn = np.zeros(len(ix.size), dtype=bool)
    is_drawn[drawn] = True
    d_vis = drawn[(ix.t0[drawn] <= xe) & (ix.t1[drawn] > xs)] if len(drawn) else drawn
    y = alive_bytes_at(ix.t0[drawn], ix.t1[drawn], ix.size[drawn], x).astype(np.int64)
    out: list[Band] = []
    for c in [c for c in CATEGORIES if c in ix.per_cat] + sorted(set(ix.per_cat) - set(CATEGORIES)):
        t0s, c0, t1s, c1, rows = ix.per_cat[c]
        mine = d_vis[ix.cat[d_vis] == ix.cat_names.index(c)] if len(d_vis) else d_vis
        n_in = int(np.searchsorted(t0s, xe, side="right"))  # made by the right edge...
        count = n_in - int(np.searchsorted(t1s, xs, side="right")) - len(mine)  # ...and not freed by the left one
        if count <= 0:
            continue
        h = c0[np.searchsorted(t0s, x, side="right")] - c1[np.searchsorted(t1s, x, side="right")]
        h = h - alive_bytes_at(ix.t0[mine], ix.t1[mine], ix.size[mine], x)
        if not h.any():
            continue
        vis = rows[:n_in]
        vis = vis[(ix.t1[vis] > xs) & ~is_drawn[vis]]
        by = np.bincount(ix.keys[vis], weights=ix.size[vis].astype(np.float64), minlength=len(ix.key_names))
        top = [k for k in np.argsort(-by, kind="stable")[:3] if by[k] > 0]
        out.append(Band(category=c, x=x, y0=y.copy(), y1=y + h, count=count, top_names=[ix.key_names[k] for k in top]))
        y = y + h
    return out


@dataclass
class _BandIndex:
    """What :func:`category_bands` reads on every view, built once per model: per category, the
    allocations' start and end times sorted with the running sums of their sizes (the bytes alive at
    any time are two binary searches), and the rows in order of their start."""

    t0: np.ndarray
    t1: np.ndarray  # inf when alive at the end
    size: np.ndarray
    cat: np.ndarray
    cat_names: list[str]
    keys: np.ndarray
    key_names: list[str]
    per_cat: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]


def _band_index(model: TimelineModel) -> _BandIndex:
    ix = model.cache.get("bands")
    if ix is None:
        al = model.allocs
        t0 = al["t0_ms"].to_numpy(dtype=np.float64)
        t1 = np.where(al["alive_at_end"].to_numpy(), np.inf, al["t1_ms"].to_numpy(dtype=np.float64))
        size = al["size"].to_numpy().astype(np.int64)
        cat, cat_names = labels.codes(al["category"])
        # each row's label: its name, else its module, else its site, as one integer key per distinct label
        keys, key_names = _label_keys([al[c] for c in ("name", "module") if c in al] + [al["site"]])
        per: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
        t0_sorted = bool(len(t0) < 2 or (t0[1:] >= t0[:-1]).all())  # rows are in allocation order: usually already
        for k in np.unique(cat[size > 0]):
            rows = np.flatnonzero((cat == k) & (size > 0))
            o0 = rows if t0_sorted else rows[np.argsort(t0[rows], kind="stable")]
            o1 = rows[np.argsort(t1[rows])]  # ties in any order: the running sums at a search position are the same
            per[cat_names[k]] = (t0[o0], _running_sum(size[o0]), t1[o1], _running_sum(size[o1]), o0)
        ix = _BandIndex(t0, t1, size, cat, cat_names, keys, key_names, per)
        model.cache["bands"] = ix
    return ix


def _running_sum(v: np.ndarray) -> np.ndarray:
    """``[0, v0, v0+v1, ...]`` in one new array."""
    out = np.empty(len(v) + 1, dtype=np.int64)
    out[0] = 0
    np.cumsum(v, out=out[1:])
    return out


def _label_keys(cols: list[pd.Series]) -> tuple[np.ndarray, list[str]]:
    """Per row, the first non-empty label among ``cols`` (the last one is taken as it is), as one
    integer key over all of them, and the label of each key."""
    keys = np.full(len(cols[0]), -1, dtype=np.int64)
    names: list[str] = []
    for j, col in enumerate(cols):
        codes, col_names = labels.codes(col)
        empty = np.array([lab == "" for lab in col_names], dtype=bool) if j < len(cols) - 1 else np.zeros(len(col_names), bool)
        take = (keys < 0) & ~empty[codes]
        keys[take] = codes[take].astype(np.int64) + len(names)  # int64: small code types would overflow
        names += col_names
    return np.where(keys < 0, len(names), keys), names + [""]


def module_tree(alive: pd.DataFrame, root: str = "all") -> pd.DataFrame:
    """The bytes of ``alive`` (an ``allocs`` slice) as a tree by module path, for a treemap or icicle.

    Leaves are named tensors (a parameter under its module: 'blocks.0.qkv' > 'weight') and, per
    module, its unnamed bytes by category; allocations with no module hang under '<no module>'.
    Columns: id (full path, unique), parent ('' for the root), label, bytes (the subtree's),
    category (the leaf's, or the largest category in the subtree), module (the module path the
    node stands for).
    """
    from memprof.analysis.attribution import NO_MODULE

    rows: dict[str, dict[str, Any]] = {root: {"id": root, "parent": "", "label": root, "bytes": 0, "cats": {}, "module": ""}}

    def node(path: str) -> str:
        if path in ("", NO_MODULE):
            key = f"{root}/{NO_MODULE}" if path == NO_MODULE else root
            if key not in rows:
                rows[key] = {"id": key, "parent": root, "label": NO_MODULE, "bytes": 0, "cats": {}, "module": NO_MODULE}
            return key
        key = f"{root}/{path}"
        if key not in rows:
            parent = node(path.rsplit(".", 1)[0]) if "." in path else root
            rows[key] = {"id": key, "parent": parent, "label": path.rsplit(".", 1)[-1], "bytes": 0, "cats": {}, "module": path}
        return key

    mod = alive["module"].astype(str).to_numpy() if "module" in alive else np.full(len(alive), "", object)
    name = alive["name"].astype(str).to_numpy() if "name" in alive else np.full(len(alive), "", object)
    cat = alive["category"].astype(str).to_numpy()
    size = alive["size"].to_numpy()
    g = pd.DataFrame({"m": np.where(mod == "", NO_MODULE, mod), "n": name, "c": cat, "s": size}).groupby(["m", "n", "c"], sort=False)["s"].sum()
    for (m, n, c), b in g.items():
        parent = node(m)
        leaf = f"{parent}#{n or c}"
        label = (n[len(m) + 1:] if m and n.startswith(m + ".") else n) if n else c
        if leaf not in rows:
            rows[leaf] = {"id": leaf, "parent": parent, "label": label, "bytes": 0, "cats": {}, "module": m}
        k: str | None = leaf
        while k:
            r = rows[k]
            r["bytes"] += int(b)
            r["cats"][c] = r["cats"].get(c, 0) + int(b)
            k = r["parent"] or None
    out = pd.DataFrame([{"id": r["id"], "parent": r["parent"], "label": r["label"], "bytes": r["bytes"],
                         "category": max(r["cats"], key=r["cats"].get) if r["cats"] else "", "module": r["module"]} for r in rows.values()])
    return out


def module_mask(allocs: pd.DataFrame, module: str) -> np.ndarray:
    """Rows of ``allocs`` in ``module`` or below it ('<no module>': those without one)."""
    from memprof.analysis.attribution import NO_MODULE

    mod = allocs["module"].astype(str)
    if module == NO_MODULE:
        return (mod == "").to_numpy()
    return ((mod == module) | mod.str.startswith(module + ".")).to_numpy() if module else np.ones(len(allocs), bool)


def module_timeline(model: TimelineModel, module: str, n: int = 800) -> pd.DataFrame:
    """Bytes alive over time of the allocations in ``module`` (and below), one column per category.

    Sampled at the allocated curve's min/max-reduced times (``n`` buckets) plus every
    allocation or free of the module's own allocations when there are few. Columns: t_ms, then
    one int column per category present.
    """
    al = model.allocs
    m = module_mask(al, module)
    x, _ = step_view(model.t_alloc, model.allocated, None, None, n)
    t0 = al["t0_ms"].to_numpy(dtype=np.float64)[m]
    t1 = np.where(al["alive_at_end"].to_numpy()[m], np.inf, al["t1_ms"].to_numpy(dtype=np.float64)[m])
    if m.sum() <= 4 * n:
        x = np.unique(np.concatenate([x, t0, t1[np.isfinite(t1)]]))
    size = al["size"].to_numpy().astype(np.int64)[m]
    cats = al["category"].astype(str).to_numpy()[m]
    out = {"t_ms": x}
    for c in [c for c in CATEGORIES if c in set(cats)] + sorted(set(cats) - set(CATEGORIES)):
        k = cats == c
        out[c] = alive_bytes_at(t0[k], t1[k], size[k], x)
    return pd.DataFrame(out)


def alive_at(model: TimelineModel, t_ms: float) -> pd.DataFrame:
    """Allocations alive at ``t_ms`` (ms since start), largest first; columns as ``model.allocs``."""
    al = model.allocs
    m = (al["t0_ms"].to_numpy() <= t_ms) & ((al["t1_ms"].to_numpy() > t_ms) | al["alive_at_end"].to_numpy())
    return al[m].sort_values("size", ascending=False, kind="stable")


def by_category(df: pd.DataFrame) -> pd.DataFrame:
    """Bytes and counts per category of an allocation table. Columns: category, bytes, count."""
    g = df.groupby("category", sort=False)["size"].agg(["sum", "count"]).reset_index()
    g.columns = ["category", "bytes", "count"]
    return g.sort_values("bytes", ascending=False, ignore_index=True)


def by_site(df: pd.DataFrame, top: int = 20) -> pd.DataFrame:
    """Bytes per allocation site. Columns: site, category, bytes, count.

    ``category`` is the site's one category, or for a site whose allocations fall in several
    (e.g. ``<no Python frames>``: gradients and optimizer state) each with its bytes, largest
    first (``optimizer_state 981.3 MiB + gradient 490.7 MiB``), so it always agrees with
    :func:`by_category`."""
    from memprof.units import fmt_bytes

    if not len(df):
        return pd.DataFrame(columns=["site", "category", "bytes", "count"])
    g = df.groupby("site", sort=False).agg(bytes=("size", "sum"), count=("size", "count")).reset_index()
    g = g.sort_values("bytes", ascending=False, ignore_index=True).head(top)
    per = df[df["site"].isin(g["site"])].groupby(["site", "category"], sort=False, observed=True)["size"].sum()
    label = {}
    for site, cats in per.groupby(level=0, sort=False):
        c = cats.droplevel(0).sort_values(ascending=False)
        label[site] = str(c.index[0]) if len(c) == 1 else " + ".join(f"{k} {fmt_bytes(int(b))}" for k, b in c.items())
    g["category"] = g["site"].map(label)
    return g[["site", "category", "bytes", "count"]]


def align_offset(m: TimelineModel) -> float:
    """Where to put 0 when comparing: the start of the first forward phase (else the trace start), in ms."""
    f = m.phases[m.phases["phase"] == "forward"]
    return float(f["start_ms"].iloc[0]) if len(f) else 0.0


def phase_knots(ref: TimelineModel, m: TimelineModel) -> tuple[np.ndarray, np.ndarray]:
    """Matching time points of ``m`` and ``ref`` (ms): the start and end of every (phase, iteration)
    both have, as (t_m, t_ref), strictly increasing in both. Empty when they share no phase."""
    key = ["phase", "iteration"]
    both = m.phases.merge(ref.phases, on=key, suffixes=("_m", "_r"))
    if not len(both):
        return np.zeros(0), np.zeros(0)
    tm = np.concatenate([both["start_ms_m"].to_numpy(float), both["end_ms_m"].to_numpy(float)])
    tr = np.concatenate([both["start_ms_r"].to_numpy(float), both["end_ms_r"].to_numpy(float)])
    order = np.lexsort((tr, tm))
    tm, tr = tm[order], tr[order]
    keep_m, keep_r = [tm[0]], [tr[0]]
    for a, b in zip(tm[1:], tr[1:]):  # nested or overlapping ranges: keep a monotone chain only
        if a > keep_m[-1] and b > keep_r[-1]:
            keep_m.append(a)
            keep_r.append(b)
    return np.asarray(keep_m), np.asarray(keep_r)


def warp(t: np.ndarray, knots: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Map times of one snapshot onto another's clock: piecewise linear between the matched phase
    boundaries (each phase of each iteration stretched onto the other's), shifted by the nearest
    knot outside them (slope 1: before the first phase and after the last, time runs as recorded)."""
    km, kr = knots
    t = np.asarray(t, dtype=float)
    if len(km) == 0:
        return t
    if len(km) == 1:
        return t - km[0] + kr[0]
    out = np.interp(t, km, kr)
    lo, hi = t < km[0], t > km[-1]
    out[lo] = t[lo] - km[0] + kr[0]
    out[hi] = t[hi] - km[-1] + kr[-1]
    return out


def verdict(m: TimelineModel) -> dict[str, Any]:
    """The analysis's verdict (:mod:`memprof.analysis.verdict`) as the views show it.

    Keys: verdict, explanation, remedies (list), numbers (dict of label -> value).
    """
    v = m.analysis.verdict
    return {"verdict": str(v.verdict), "explanation": str(v.explanation), "remedies": list(v.remedies),
            "numbers": {str(k): val for k, val in dict(v.numbers).items()}}


def compare_summary(models: list[TimelineModel], labels: list[str]) -> pd.DataFrame:
    """One row per snapshot. Columns: snapshot, peak_allocated, peak_reserved, delta_peak, duration_ms, allocations."""
    from memprof.units import fmt_bytes

    base = models[0].peak_bytes
    return pd.DataFrame({
        "snapshot": labels,
        "peak_allocated": [fmt_bytes(m.peak_bytes) for m in models],
        "peak_reserved": [fmt_bytes(m.peak_reserved_bytes) for m in models],
        "delta_peak": [fmt_bytes(m.peak_bytes - base) for m in models],
        "duration_ms": [round(m.end_ms, 3) for m in models],
        "allocations": [len(m.allocs) for m in models],
    })


def diff_by(models: list[TimelineModel], labels: list[str], key: str) -> pd.DataFrame:
    """Bytes alive at each snapshot's peak grouped by ``key`` (category or site), one column per
    snapshot (MiB) and ``delta_MiB`` of the last against the first, largest change first."""
    cols = {}
    for lab, m in zip(labels, models):
        alive = alive_at(m, m.peak_ms)
        cols[lab] = alive.groupby(key)["size"].sum() / 2**20
    df = pd.DataFrame(cols).fillna(0.0)
    df["delta_MiB"] = df[labels[-1]] - df[labels[0]]
    df = df.reindex(df["delta_MiB"].abs().sort_values(ascending=False).index).round(2)
    return df.reset_index().rename(columns={"index": key})
