"""Categories from lifetimes and stacks, for what phases and metadata leave ``unknown``.

Snapshots recorded by others carry no names. What the trace still shows, applied in order to the
allocations still ``unknown`` (``category_source`` 'lifetime'):

1. alive before the window (``alive_at_start``), only when the recorder listed nothing (no names,
   no metadata addresses; otherwise what it left out is none of these and stays ``unknown``):
   freed in an optimizer phase or by an optimizer frame -> optimizer_state (state replaced by an
   out-of-place update); freed by ``zero_grad`` -> gradient; alive to the end -> parameter
   (model state that outlives the window: parameters and buffers, or optimizer state a step did
   not rewrite; the trace cannot tell them apart); freed in backward -> activation (saved by a
   forward before the window); otherwise -> temporary;
2. made by a parameter-building frame (``Module._apply`` / ``to`` / ``cuda``,
   ``reset_parameters``, ``nn.init``, ``load_state_dict``, ``from_pretrained``) and alive to the
   end -> parameter;
3. made by an optimizer frame (a file or function named like ``optim``, ``adam``, ``sgd``) ->
   optimizer_state when it outlives the iteration that made it, else temporary;
4. made in backward (an autograd stack, or no frames while the trace has them) and alive to the
   end -> gradient;
5. the rest by lifetime: freed within the iteration (sawtooth or phases) that made it ->
   temporary; outliving it or alive at the end -> activation (outputs, caches, what a forward keeps).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from memprof.analysis.codes import CAT, SRC
from memprof.analysis.stackphases import B, O, stack_kinds
from memprof.snapshot.tables import Snapshot

_PARAM = re.compile(r"^(_apply|to|cuda|convert|reset_parameters|_load_from_state_dict|load_state_dict|from_pretrained|"
                    r"_init_weights|init_weights|kaiming_uniform_|uniform_|normal_|trunc_normal_|xavier_uniform_)$")
_ZERO_GRAD = re.compile(r"zero_grad")


def _stack_has(snap: Snapshot, pattern: re.Pattern[str]) -> np.ndarray:
    """Per interned stack: whether one of its Python frames' function names matches ``pattern``."""
    names = snap.frames["name"].to_numpy(dtype=object)
    fn = snap.frames["filename"].to_numpy(dtype=object)
    hit = np.array([str(f).endswith(".py") and bool(pattern.search(str(n))) for f, n in zip(fn, names)] + [False], dtype=bool)
    out = np.zeros(len(snap.stack_offsets), dtype=bool)  # last slot: no stack
    if len(snap.stack_frames):
        owner = np.repeat(np.arange(len(snap.stack_offsets) - 1), np.diff(snap.stack_offsets))
        np.logical_or.at(out, owner, hit[snap.stack_frames])
    return out


def lifetime_rules(snap: Snapshot, a: pd.DataFrame, ph: Any, fph: Any,
                   cat: np.ndarray, src: np.ndarray, iteration: np.ndarray | None = None,
                   free_iteration: np.ndarray | None = None, recorder_knows: bool = False) -> None:
    """Fill ``cat``/``src`` (int8 codes into ``CATEGORIES``/``SOURCES``, in place) where ``cat`` is
    still 'unknown' (see the module docstring). ``ph``/``fph``: the phases at allocation and at
    free (:class:`memprof.analysis.categories.PhaseCodes`).

    ``recorder_knows``: the recorder listed the parameters, gradients and optimizer state
    (metadata addresses or names): what it left out and was alive before the window is none of
    them (a DDP bucket, a library workspace), so rule 1 does not guess.
    """

    unknown = CAT["unknown"]
    unk = cat == unknown
    if not unk.any():
        return
    sid = a["stack_id"].to_numpy().astype(np.int64)
    kinds = stack_kinds(snap) if len(snap.stack_offsets) > 1 else np.zeros(0, np.int8)
    k = np.where(sid >= 0, kinds[np.maximum(sid, 0)] if len(kinds) else -1, -1)
    has_frames = bool(snap.info.get("has_frames"))
    at_end = a["alive_at_end"].to_numpy()
    before = a["alive_at_start"].to_numpy()
    param_frame = _stack_has(snap, _PARAM)[np.where(sid >= 0, sid, -1)]
    zero_grad = _stack_has(snap, _ZERO_GRAD)[np.where(sid >= 0, sid, -1)]

    def put(mask: np.ndarray, name: str) -> None:
        m = mask & unk
        cat[m] = CAT[name]
        src[m] = SRC["lifetime"]
        unk[m] = False

    # 1. alive before the window (the stack is the free's, when there was one)
    if recorder_knows:
        before = np.zeros(len(a), dtype=bool)
    put(before & (fph.is_("optimizer") | (~at_end & (k == O) & ~zero_grad)), "optimizer_state")
    put(before & zero_grad, "gradient")
    put(before & at_end, "parameter")
    put(before & fph.is_("backward"), "activation")
    put(before, "temporary")
    made = ~a["alive_at_start"].to_numpy()
    # 2.-4. what the allocating stack says
    put(made & param_frame & at_end, "parameter")
    its = iteration if iteration is not None else np.full(len(a), -1)
    fits = free_iteration if free_iteration is not None else np.full(len(a), -1)
    outlives = at_end | ((fits > its) & (its >= 0))
    put(made & (k == O) & outlives, "optimizer_state")
    put(made & (k == O), "temporary")
    backward = (k == B) | ((k < 0) & has_frames)
    put(made & backward & at_end, "gradient")
    # 5. lifetimes
    same_iter = ~at_end & (its >= 0) & (fits == its)
    put(made & same_iter, "temporary")
    put(made & ~at_end & (its < 0) & (fits < 0) & (ph.codes == fph.codes) & ~ph.is_("outside"), "temporary")
    put(made, "activation")
