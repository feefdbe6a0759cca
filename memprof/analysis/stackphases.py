"""Forward, backward and optimizer phases of a snapshot nobody labelled, told apart by its stacks.

A plain ``_record_memory_history`` snapshot has no phase marks, but each allocation's stack says
which part of a training step made it:

* **backward** — the autograd engine's frames (``torch::autograd::Engine``, ``evaluate_function``,
  ``_engine_run_backward``), or no frames at all while the rest of the trace has them (on CUDA the
  engine runs backward on its own thread, where no Python frames are recorded);
* **optimizer** — a Python frame in an optimizer (a file or function named like ``optim``,
  ``adam``, ``sgd``, ``zero_grad``, ``clip_grad``), or inside torch's own ``Optimizer.step#...``
  record_function range (it lands in ``external_annotations``);
* **forward** — any other allocation with Python frames (the model, the loss, data moves).

Allocations are labelled in trace order and grouped into runs; a run shorter than
:data:`MIN_RUN` allocations is absorbed by its neighbours (a custom autograd Function's Python
backward, a stray forward-side allocation). Each forward run starts a new iteration. Only used
when the trace shows a backward or optimizer run, i.e. a training step; otherwise the sawtooth
detector applies.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from memprof.snapshot.tables import ACTIONS, Snapshot
from memprof.replay.timeline import Replay

#: The columns of a phases table (:func:`memprof.analysis.phases.find_phases`).
PHASE_COLUMNS = ["phase", "iteration", "start_us", "end_us", "start_idx", "end_idx", "source"]


def empty_phases() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(
        PHASE_COLUMNS, (object, np.int64, np.float64, np.float64, np.int64, np.int64, object))})

MIN_RUN = 3
A_ALLOC = ACTIONS.index("alloc")
_BACKWARD_CPP = re.compile(r"autograd::Engine|Engine::(evaluate_function|thread_main|execute)|autograd::.*::apply_with_saved|python_engine")
_BACKWARD_PY = frozenset({"_engine_run_backward", "run_backward"})
_OPTIM = re.compile(r"optim|adam|sgd|lion|lamb|zero_grad|clip_grad|momentum", re.IGNORECASE)
F, B, O, N = 0, 1, 2, -1


def stack_kinds(snap: Snapshot) -> np.ndarray:
    """Per interned stack: 0 forward, 1 backward, 2 optimizer, -1 no frames (see the module docstring)."""
    cached = snap.info.get("_stack_kinds")
    if cached is not None:
        return cached
    fn = snap.frames["filename"].to_numpy(dtype=object)
    name = snap.frames["name"].to_numpy(dtype=object)
    is_py = np.array([str(f).endswith(".py") for f in fn], dtype=bool)
    bw = np.array([(p and n in _BACKWARD_PY) or (not p and bool(_BACKWARD_CPP.search(str(n)))) for p, n in zip(is_py, name)], dtype=bool)
    opt = np.array([p and bool(_OPTIM.search(str(f).replace("\\", "/").rsplit("/", 1)[-1] + " " + str(n))) for p, f, n in zip(is_py, fn, name)],
                   dtype=bool)
    out = np.full(len(snap.stack_offsets) - 1, N, dtype=np.int8)
    for s in range(len(out)):
        ids = snap.stack_frames[snap.stack_offsets[s]: snap.stack_offsets[s + 1]]
        if not len(ids):
            continue
        if bw[ids].any():
            out[s] = B
        elif opt[ids].any():
            out[s] = O
        elif is_py[ids].any():
            out[s] = F
    snap.info["_stack_kinds"] = out
    return out


def _optimizer_ranges(snap: Snapshot, device: int) -> np.ndarray:
    """(start_us, end_us) of torch's own ``Optimizer.step#...`` and ``Optimizer.zero_grad#...`` ranges."""
    ann = snap.annotations
    if ann is None or not len(ann):
        return np.zeros((0, 2), np.int64)
    a = ann[ann["name"].astype(str).str.startswith("Optimizer.")]
    if (a["device"] == device).any():
        a = a[a["device"] == device]
    s = a[a["stage"] == "START"].sort_values("time_us")["time_us"].to_numpy()
    e = a[a["stage"] == "END"].sort_values("time_us")["time_us"].to_numpy()
    k = min(len(s), len(e))
    return np.stack([s[:k], e[:k]], axis=1) if k else np.zeros((0, 2), np.int64)


def _runs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(label, first position, last position) of each run of equal labels."""
    brk = np.flatnonzero(np.diff(labels) != 0) + 1
    starts = np.concatenate([[0], brk])
    ends = np.concatenate([brk - 1, [len(labels) - 1]])
    return labels[starts], starts, ends


def from_frames(snap: Snapshot, rep: Replay) -> pd.DataFrame:
    """forward/backward/optimizer phases (source 'frames'), or an empty frame when the stacks cannot tell.

    Same columns as :func:`memprof.analysis.phases.find_phases`.
    """

    if not snap.info.get("has_frames"):
        return empty_phases()
    ev = snap.device_events(rep.device)
    action = ev["action"].to_numpy()
    pos = np.flatnonzero(action == A_ALLOC)
    if len(pos) < 2 * MIN_RUN:
        return empty_phases()
    sid = ev["stack_id"].to_numpy()[pos]
    kinds = stack_kinds(snap)
    lab = np.where(sid >= 0, kinds[np.maximum(sid, 0)], N).astype(np.int8)
    if not (lab >= 0).any():
        return empty_phases()
    lab = np.where(lab == N, B, lab)  # no frames in a trace that has them: the autograd thread
    times = ev["time_us"].to_numpy()
    opt = _optimizer_ranges(snap, rep.device)
    if len(opt):
        t = times[pos]
        j = np.searchsorted(opt[:, 0], t, side="right") - 1
        inside = (j >= 0) & (t <= opt[np.maximum(j, 0), 1])
        lab = np.where(inside, O, lab)
    # absorb short runs into the previous one, until stable
    for _ in range(4):
        rl, rs, re_ = _runs(lab)
        short = (re_ - rs + 1) < MIN_RUN
        if not short[1:].any():
            break
        for k in np.flatnonzero(short):
            if k > 0:
                lab[rs[k]: re_[k] + 1] = lab[rs[k] - 1]
    rl, rs, re_ = _runs(lab)
    if not np.isin(rl, (B, O)).any():
        return empty_phases()
    names = {F: "forward", B: "backward", O: "optimizer"}
    it = np.cumsum(np.concatenate([[0], (rl[1:] == F) & (rl[:-1] != F)]))
    start_idx = pos[rs]
    end_idx = np.concatenate([pos[rs[1:]] - 1, [len(action) - 1]])  # a run lasts until the next one starts
    df = pd.DataFrame({
        "phase": [names[int(x)] for x in rl], "iteration": it.astype(np.int64),
        "start_us": times[start_idx].astype(np.float64), "end_us": times[end_idx].astype(np.float64),
        "start_idx": start_idx.astype(np.int64), "end_idx": end_idx.astype(np.int64), "source": "frames",
    })
    return df[PHASE_COLUMNS]
