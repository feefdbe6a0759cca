"""Who owns each allocation: the tensor's name, the module that made it, the user's line.

The truth comes from what memprof's recorder stored inside the snapshot
(:data:`memprof.snapshot.schema.ATTRIBUTION_KEY`, written by :mod:`memprof.recorder.naming`):

* *observations* ``[time_us, storage addr, nbytes, name, category]`` of named tensors
  (parameters by ``named_parameters()`` name, ``NAME.grad``, ``NAME (exp_avg)``); each is matched
  to the allocation at that address alive at that time (the allocator hands an address to one
  live block at a time);
* module enter/exit events of forward calls and start/end events of each autograd node's
  execution in backward, tagged with the module whose forward created the node: an allocation
  made at time t belongs to the innermost module running at t (a backward allocation to its
  node's module), and a backward allocation's site is that module's forward call site;
* optimizer step intervals.

A snapshot from anyone else has none of this: every function here then returns empty columns
and the categories fall back to lifetimes, phases and frames (:mod:`memprof.analysis.categories`).
No torch here; the record is untrusted input and is validated (a malformed record is ignored).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from memprof.analysis import labels

NAMED_CATEGORIES = ("parameter", "gradient", "optimizer_state", "input", "workspace")
WORKSPACE_NAME = "<cuBLAS workspace>"
NO_MODULE = "<no module>"
ATTRIBUTE_COLUMNS = ("name", "name_category", "module", "context", "fwd_site", "fwd_site_file")


@dataclass
class Record:
    """The validated attribution record of one snapshot (columns as numpy arrays)."""

    modules: list[str]
    roots: list[dict[str, str]]
    sites: list[tuple[str, int, str]]
    fwd: np.ndarray  # (n, 4) int64: time_us, module code, +1/-1, site code
    bwd: np.ndarray  # (n, 3) int64: time_us, module code or -1, site code
    opt: np.ndarray  # (n, 2) int64: time_us, +1/-1
    obs: pd.DataFrame  # t_us, addr, nbytes, name, category
    compiled: dict[tuple[str, int], tuple[str, int, str]]  # inductor (file, line) -> user (file, line, function)
    workspaces: list[int]  # cuBLAS / cuBLASLt workspace sizes in bytes (CUDA recordings)

    def module_label(self, path: str) -> str:
        """A display path: the first root's own path is '' and shows as its class name."""
        if path == "" and self.roots:
            return str(self.roots[0].get("class") or "model")
        return path


def _int_table(rows: Any, width: int) -> np.ndarray:
    if not isinstance(rows, list):
        return np.zeros((0, width), dtype=np.int64)
    out = [r[:width] for r in rows if isinstance(r, list) and len(r) >= width and all(isinstance(x, int) for x in r[:width])]
    return np.asarray(out, dtype=np.int64).reshape(-1, width)


def parse(raw: Any) -> Record | None:
    """Validate the stored record; None when absent or not the shape memprof writes."""
    if not isinstance(raw, dict) or raw.get("version") != 1:
        return None
    try:
        modules = [str(m) for m in raw.get("modules") or []]
        roots = [{"path": str(r.get("path", "")), "class": str(r.get("class", ""))} for r in raw.get("roots") or [] if isinstance(r, dict)]
        sites = [(str(s[0]), int(s[1]), str(s[2])) for s in raw.get("sites") or [] if isinstance(s, list) and len(s) == 3]
        fwd, bwd, opt = _int_table(raw.get("forward"), 4), _int_table(raw.get("backward"), 3), _int_table(raw.get("optimizer"), 2)
        rows = [r for r in raw.get("tensors") or [] if isinstance(r, list) and len(r) == 5 and isinstance(r[0], int)
                and isinstance(r[1], int) and isinstance(r[2], int) and isinstance(r[3], str) and r[4] in NAMED_CATEGORIES]
    except (TypeError, ValueError, AttributeError, OverflowError):
        return None
    n_mod, n_site = len(modules), len(sites)
    fwd = fwd[(fwd[:, 1] >= 0) & (fwd[:, 1] < n_mod)]
    bwd = bwd[(bwd[:, 1] < n_mod) & (bwd[:, 2] < n_site)]
    obs = pd.DataFrame(rows, columns=["t_us", "addr", "nbytes", "name", "category"])
    compiled = {(str(r[0]), int(r[1])): (str(r[2]), int(r[3]), str(r[4])) for r in raw.get("compiled_sites") or []
                if isinstance(r, list) and len(r) == 5 and isinstance(r[1], int) and isinstance(r[3], int)}
    ws = [int(w) for w in raw.get("workspaces") or [] if isinstance(w, int) and w > 0]
    return Record(modules, roots, sites, fwd, bwd, opt, obs.astype({"t_us": np.int64, "addr": np.int64, "nbytes": np.int64}),
                  compiled, ws)


def _step_function(times: np.ndarray, values: np.ndarray, at: np.ndarray) -> np.ndarray:
    """values[k] for the last times[k] <= at (-1 before the first)."""
    if not len(times):
        return np.full(len(at), -1, dtype=np.int64)
    j = np.searchsorted(times, at, side="right") - 1
    return np.where(j >= 0, values[np.maximum(j, 0)], -1)


def forward_context(rec: Record) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(times, innermost module code after each event or -1, depth after each event) of forward calls."""
    t, cur, depth = [], [], []
    stack: list[int] = []
    for time_us, code, sign, _site in rec.fwd:
        if sign > 0:
            stack.append(int(code))
        elif stack:
            # exits come innermost first; tolerate a missing enter
            if stack[-1] == code:
                stack.pop()
            elif code in stack:
                del stack[len(stack) - 1 - stack[::-1].index(int(code)):]
        t.append(int(time_us))
        cur.append(stack[-1] if stack else -1)
        depth.append(len(stack))
    return np.asarray(t, np.int64), np.asarray(cur, np.int64), np.asarray(depth, np.int64)


def owner_of_name(name: str) -> str:
    """The module path that owns a tensor name: 'blocks.0.qkv.weight (exp_avg)' -> 'blocks.0.qkv'."""
    base = name.split(" (", 1)[0]
    if base.endswith(".grad"):
        base = base[: -len(".grad")]
    return base.rsplit(".", 1)[0] if "." in base else ""


def attribute(snap: Any, allocations: pd.DataFrame) -> pd.DataFrame:
    """Names, modules and user sites for ``allocations`` (a replay's allocations table).

    Returns a DataFrame on the same index, every column a categorical of strings:
        name (str: parameter/buffer name, 'NAME.grad', 'NAME (state key)', 'input[i]' (the i-th
        tensor argument of a root module's call), '<cuBLAS workspace>'; '' when unnamed),
        name_category (str: parameter, gradient, optimizer_state, input, workspace; '' when unnamed),
        module (str: module path that made or owns it, the first root shown by its class name;
        '' when unknown), context (str: 'forward', 'backward', 'optimizer' or ''),
        fwd_site (str: 'file.py:line:function': the model's source line behind an inductor-generated
        frame, or the module's forward call for a backward allocation; '' otherwise),
        fwd_site_file (str: that frame's full filename; '').
    """
    n = len(allocations)
    rec = parse((getattr(snap, "info", None) or {}).get("attribution"))
    if rec is None or not n:  # others' snapshots: one empty label, no string per row
        return pd.DataFrame({c: labels.constant(n) for c in ATTRIBUTE_COLUMNS}, index=allocations.index)
    cols = {c: np.full(n, "", object) for c in ATTRIBUTE_COLUMNS}
    start = allocations["alloc_us"].to_numpy(dtype=np.float64)
    start = np.where(np.isnan(start), -np.inf, start)
    end = allocations["free_us"].to_numpy(dtype=np.float64)
    end = np.where(np.isnan(end), np.inf, end)
    addr = allocations["addr"].to_numpy()
    name, ncat, module, ctx = cols["name"], cols["name_category"], cols["module"], cols["context"]
    fsite, ffile = cols["fwd_site"], cols["fwd_site_file"]

    # 1. names: each observation -> the allocation at that address alive at that time
    if len(rec.obs):
        al = pd.DataFrame({"row": np.arange(n), "addr": addr, "start": start, "end": end}).sort_values("start", kind="stable")
        ob = rec.obs.assign(t=rec.obs["t_us"].astype(np.float64)).sort_values("t", kind="stable")
        m = pd.merge_asof(ob, al, left_on="t", right_on="start", by="addr", direction="backward")
        m = m[m["row"].notna() & (m["end"] >= m["t"])]
        m = m.drop_duplicates("row", keep="first")
        rows = m["row"].to_numpy(dtype=np.int64)
        name[rows] = m["name"].to_numpy(dtype=object)
        ncat[rows] = m["category"].to_numpy(dtype=object)

    # 1b. cuBLAS workspaces: made once by the first matmul on a stream (often before the window),
    # kept by torch for the process's life; unnamed blocks alive at the end of exactly that size
    if rec.workspaces:
        m = (name == "") & allocations["alive_at_end"].to_numpy() & np.isin(allocations["size"].to_numpy(), rec.workspaces)
        name[m] = WORKSPACE_NAME
        ncat[m] = "workspace"

    # 2. module context at allocation time: a backward node's module, else the innermost forward call
    t_alloc = np.where(np.isfinite(start), start, -1).astype(np.int64)
    made = np.isfinite(start)
    fb_code = np.full(n, -1, np.int64)
    site_code = np.full(n, -1, np.int64)
    if len(rec.bwd):
        b = rec.bwd[np.argsort(rec.bwd[:, 0], kind="stable")]
        fb_code = _step_function(b[:, 0], b[:, 1], t_alloc)
        site_code = _step_function(b[:, 0], b[:, 2], t_alloc)
        in_b = made & (fb_code >= 0)
        ctx[in_b] = "backward"
    else:
        in_b = np.zeros(n, bool)
    ft, fcur, _ = forward_context(rec)
    f_code = _step_function(ft, fcur, t_alloc)
    in_f = made & ~in_b & (f_code >= 0)
    ctx[in_f] = "forward"
    code = np.where(in_b, fb_code, np.where(in_f, f_code, -1))
    if len(rec.opt):
        o = rec.opt[np.argsort(rec.opt[:, 0], kind="stable")]
        in_o = made & ~in_b & ~in_f & (_step_function(o[:, 0], o[:, 1], t_alloc) > 0)
        ctx[in_o] = "optimizer"
    mod_labels = np.array([rec.module_label(p) for p in rec.modules] + [""], dtype=object)
    module[:] = mod_labels[np.where(code >= 0, code, len(mod_labels) - 1)]
    named = (name != "") & (ncat != "workspace")
    if named.any():
        owners = {s: rec.module_label(owner_of_name(s)) for s in set(name[named])}
        module[named] = [owners[s] for s in name[named]]

    # 3. compiled code: the model's source line behind inductor's generated line
    if rec.compiled and len(getattr(snap, "stack_offsets", [])) > 1:
        uf = snap.user_frame_ids()
        fr = snap.frames
        sid = allocations["stack_id"].to_numpy().astype(np.int64)
        fid = np.where(sid >= 0, uf[np.maximum(sid, 0)] if len(uf) else -1, -1)
        keys = list(zip(fr["filename"].to_numpy(dtype=object), fr["line"].to_numpy()))
        hit = np.array([k in rec.compiled for k in keys] + [False], dtype=bool)
        ok = hit[np.where(fid >= 0, fid, len(keys))]
        if ok.any():
            mapped = [rec.compiled[keys[f]] for f in fid[ok]]
            fsite[ok] = [f"{os.path.basename(f)}:{ln}:{fn}" for f, ln, fn in mapped]
            ffile[ok] = [f for f, _, _ in mapped]

    # 4. the forward call site of backward allocations (that no compiled line already names)
    has_site = in_b & (site_code >= 0) & (fsite == "")
    if has_site.any():
        slab = np.array([f"{os.path.basename(f)}:{ln}:{fn}" for f, ln, fn in rec.sites], dtype=object)
        sfile = np.array([f for f, _, _ in rec.sites], dtype=object)
        fsite[has_site] = slab[site_code[has_site]]
        ffile[has_site] = sfile[site_code[has_site]]
    return pd.DataFrame({c: labels.as_categorical(cols[c]) for c in ATTRIBUTE_COLUMNS}, index=allocations.index)


def phases(snap: Any) -> pd.DataFrame:
    """Forward / backward / optimizer ranges from the record (host clock, µs).

    Returns phase, iteration, start_us, end_us: each top-level module call is a 'forward'; each
    run of backward node executions between forward calls and optimizer steps is a 'backward';
    each optimizer step an 'optimizer'. The iteration is the number of optimizer steps (or,
    without an optimizer, of backward runs) finished before the range starts. Empty without a record.
    """
    cols: dict[str, list[Any]] = {"phase": [], "iteration": [], "start_us": [], "end_us": []}
    rec = parse((getattr(snap, "info", None) or {}).get("attribution"))
    if rec is None:
        return pd.DataFrame(cols)
    ranges: list[tuple[str, int, int]] = []
    stack = 0
    t0 = 0
    for time_us, _code, sign, _site in rec.fwd:
        if sign > 0:
            if stack == 0:
                t0 = int(time_us)
            stack += 1
        elif stack > 0:
            stack -= 1
            if stack == 0:
                ranges.append(("forward", t0, int(time_us)))
    o = rec.opt[np.argsort(rec.opt[:, 0], kind="stable")] if len(rec.opt) else rec.opt
    o_start = None
    for time_us, sign in o:
        if sign > 0:
            o_start = int(time_us)
        elif o_start is not None:
            ranges.append(("optimizer", o_start, int(time_us)))
            o_start = None
    if len(rec.bwd):
        b = rec.bwd[np.argsort(rec.bwd[:, 0], kind="stable")]
        cuts = np.sort(np.array([r[1] for r in ranges] + [r[2] for r in ranges], dtype=np.int64))
        # group node executions that no forward call or optimizer step separates
        grp = np.searchsorted(cuts, b[:, 0], side="right")
        for g in np.unique(grp):
            tt = b[grp == g, 0]
            ranges.append(("backward", int(tt.min()), int(tt.max())))
    ranges.sort(key=lambda r: (r[1], r[2]))
    opt_ends = np.sort(np.array([r[2] for r in ranges if r[0] == "optimizer"], dtype=np.int64))
    bwd_ends = np.sort(np.array([r[2] for r in ranges if r[0] == "backward"], dtype=np.int64))
    marks = opt_ends if len(opt_ends) else bwd_ends
    for ph, s, e in ranges:
        cols["phase"].append(ph)
        cols["iteration"].append(int(np.searchsorted(marks, s, side="left")) if ph != "optimizer" or not len(opt_ends)
                                 else int(np.searchsorted(opt_ends, e, side="left")))
        cols["start_us"].append(s)
        cols["end_us"].append(e)
    return pd.DataFrame(cols)
