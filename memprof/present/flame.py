"""The memory alive at one moment (the peak by default) as a call tree: what a memray user reads as
a flame graph, drawn as an icicle (the program's entry at the top, the allocating frame at the bottom).

Truth: the bytes are the allocations :func:`memprof.present.views.alive_at` finds alive at ``t_ms`` (the
replay of the allocator's own trace); the paths are the allocations' recorded stacks
(:meth:`memprof.snapshot.load.Snapshot.stack`, innermost first, reversed here). Each node's value is the sum
of the bytes of the allocations whose stack passes through it, so a parent equals the sum of its
children plus what was allocated in its own frame; the root is the total alive. An allocation
without frames hangs under one pseudo-frame naming why (autograd's thread or C++, or allocated
before recording). Immediately repeated frames (recursion) are folded into one, and the frames of
the harness that ran the program (:data:`HARNESS`: memprof's CLI and recorder, runpy) are left out.

No plotting here: :func:`memprof.present.figures.plot_icicle` draws the frame this module returns.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd

from memprof.units import fmt_bytes

ROOT_ID = "all"
#: Frames of the harness that ran the program (memprof's CLI and recorder, runpy): the same chain on
#: top of every stack, so they are left out and the tree starts at the workload or script.
HARNESS = ("/memprof/commands/", "/memprof/recorder/", "/memprof/cli.py", "/memprof/__main__.py", "<frozen runpy>", "/runpy.py")


def is_harness(filename: str) -> bool:
    f = str(filename).replace("\\", "/")
    return any(h in f for h in HARNESS)


def frame_label(filename: str, line: int, name: str) -> str:
    return f"{name} ({os.path.basename(str(filename))}:{int(line)})"


def call_tree(model: Any, alive: pd.DataFrame, max_depth: int = 48, min_share: float = 0.0, fold_library: bool = False) -> pd.DataFrame:
    """One row per node of the call tree of ``alive`` (rows of ``model.allocs``).

    Columns: id (the path of frames from the root, ``all;f1;f2``), parent ('' for the root), label
    (``function (file.py:line)``), bytes (alive under this node), count (allocations under it), self_bytes
    (allocated in this very frame, i.e. where the path ends), depth (0 = root). Paths deeper than
    ``max_depth`` frames keep their outermost ``max_depth - 1`` frames and their innermost one.
    Nodes under ``min_share`` of the total are merged into their parent's self bytes.
    ``fold_library``: leave out library frames (torch, site-packages: ``Module._call_impl`` and the
    like, repeated at every module level) except the innermost frame of each stack.
    """
    from memprof.snapshot.frames import is_library_file

    snap = model.snap
    sizes = alive["size"].to_numpy(dtype=np.int64)
    sids = alive["stack_id"].to_numpy(dtype=np.int64)
    before = alive["alloc_idx"].to_numpy() < 0 if "alloc_idx" in alive else np.zeros(len(alive), bool)
    total = int(sizes.sum())
    acc: dict[str, list[Any]] = {ROOT_ID: ["", "all alive", 0, 0, 0, 0]}  # id -> parent, label, bytes, count, self, depth
    by_stack = pd.DataFrame({"sid": np.where(before, -2, sids), "size": sizes}).groupby("sid")["size"].agg(["sum", "count"])
    for sid, (b, c) in by_stack.iterrows():
        sid = int(sid)
        if sid >= 0:
            raw = [(f, ln, n) for f, ln, n in reversed(snap.stack(sid)) if not is_harness(f)]
            if fold_library and raw:
                raw = [x for x in raw[:-1] if not is_library_file(str(x[0]))] + raw[-1:]
            frames = [frame_label(f, ln, n) for f, ln, n in raw]
        else:
            frames = []
        folded: list[str] = []
        for f in frames:
            if not folded or folded[-1] != f:
                folded.append(f)
        if not folded:
            folded = ["<allocated before recording started>" if sid == -2 else "<no Python frames: autograd engine thread or C++>"]
        if len(folded) > max_depth:
            folded = folded[: max_depth - 1] + [folded[-1]]
        path = ROOT_ID
        node = acc[ROOT_ID]
        node[2] += int(b)
        node[3] += int(c)
        for d, f in enumerate(folded, start=1):
            parent, path = path, f"{path};{f}"
            node = acc.setdefault(path, [parent, f, 0, 0, 0, d])
            node[2] += int(b)
            node[3] += int(c)
        node[4] += int(b)
    df = pd.DataFrame([(k, *v) for k, v in acc.items()], columns=["id", "parent", "label", "bytes", "count", "self_bytes", "depth"])
    if min_share > 0 and total > 0:
        small = df["bytes"] < min_share * total
        keep = ~small | (df["id"] == ROOT_ID)
        # fold each dropped subtree into its nearest kept ancestor's self bytes (top-level drops only)
        dropped_tops = df[small & df["parent"].isin(df.loc[keep, "id"])]
        add = dropped_tops.groupby("parent")["bytes"].sum()
        df = df[keep].copy()
        df["self_bytes"] = df["self_bytes"] + df["id"].map(add).fillna(0).astype(np.int64)
    return df.reset_index(drop=True)


def stacks_matching(model: Any, alive: pd.DataFrame, text: str) -> np.ndarray:
    """Boolean mask over ``alive``: the allocations one of whose frames (``function (file.py:line)``,
    the full path too) contains ``text``, case-insensitively. Each distinct stack is looked at once."""
    needle = text.lower()
    snap = model.snap
    sids = alive["stack_id"].to_numpy(dtype=np.int64)
    hit: dict[int, bool] = {}
    for sid in np.unique(sids):
        fr = snap.stack(int(sid)) if sid >= 0 else []
        hit[int(sid)] = any(needle in frame_label(f, ln, n).lower() or needle in str(f).lower() for f, ln, n in fr)
    return np.array([hit[int(s)] for s in sids], dtype=bool)


def hover_text(df: pd.DataFrame, total: int) -> list[str]:
    return [f"{lab}<br>{fmt_bytes(int(b))} ({b / max(total, 1):.1%}) in {int(c):,} allocation(s)"
            + (f"<br>{fmt_bytes(int(s))} allocated in this frame" if s else "")
            for lab, b, c, s in zip(df["label"], df["bytes"], df["count"], df["self_bytes"])]
