"""A device-agnostic storage tracker for devices without allocator history (MPS).

A ``TorchDispatchMode`` sees every tensor an operator returns. The first time a storage
is seen it is an allocation (Python stack from the interpreter's frames); a weak-reference
finalizer on each tensor counts how many tensors still use the storage, and when the last
one dies the storage is freed. Tensors made outside dispatch (e.g. inside the autograd
engine in C++ and never returned to Python) are invisible, so this approximates the
allocator rather than recording it. Works on any device; memprof tests it on CPU.
"""

from __future__ import annotations

import sys
import time
import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from memprof.recorder.synth import Op

_SKIP_FILES = ("torch/utils/_python_dispatch.py", "memprof/recorder/dispatch.py")


def _py_frames(limit: int = 64) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    f: Any = sys._getframe(2)
    while f is not None and len(out) < limit:
        fn = f.f_code.co_filename
        if not fn.endswith(_SKIP_FILES):
            out.append({"filename": fn, "line": int(f.f_lineno or 0), "name": f.f_code.co_name})
        f = f.f_back
    return out


class StorageTracker(TorchDispatchMode):
    """Allocation ops of one device type, as seen from operator outputs."""

    def __init__(self, device_type: str, before: dict[int, int] | None = None) -> None:
        super().__init__()
        self.device_type = device_type
        self.ops: list[Op] = []
        self.refs: dict[int, int] = {}  # storage ptr -> live tensors seen using it
        self.before = before or {}
        self.active = True

    def _free(self, ptr: int) -> None:
        if not self.active:
            return
        n = self.refs.get(ptr, 0) - 1
        if n > 0:
            self.refs[ptr] = n
            return
        self.refs.pop(ptr, None)
        self.ops.append((time.time_ns() // 1000, ptr, -1, []))  # size filled in by synth

    def _see(self, t: Any) -> None:
        if not isinstance(t, torch.Tensor) or t.device.type != self.device_type:
            return
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return
        ptr, size = int(st.data_ptr()), int(st.nbytes())
        if not ptr or not size:
            return
        if ptr not in self.refs:
            if ptr in self.before:
                return  # a view of a storage alive before recording
            self.ops.append((time.time_ns() // 1000, ptr, size, _py_frames()))
            self.refs[ptr] = 0
        self.refs[ptr] += 1
        weakref.finalize(t, self._free, ptr)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            self._see(t)
        return out
