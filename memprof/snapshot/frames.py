"""Frames and stacks: which frames are library code, a frame's label, and the stack interner.

Every stack of a snapshot is interned once (:class:`StackInterner`, CSR form); a frame's
filename, name and every other string from the file is escaped (:func:`memprof.escape.printable`)
as it is read, so nothing a file holds reaches a terminal or a page raw.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any, Sequence

import numpy as np
import pandas as pd

from memprof.errors import MemprofError
from memprof.escape import printable
from memprof.snapshot import limits

_EMPTY: list[Any] = []

NO_FRAMES_LABEL = "<no Python frames: autograd engine thread or C++>"
BEFORE_RECORDING_LABEL = "<allocated before recording started>"

_MEMPROF_OWN = re.compile(r"/memprof/(recorder/|commands/|analysis/|snapshot/|replay/|allocator/|predict/|present/|dashboard/|[a-z_]+\.py$)")
_STDLIB_NAMES = frozenset(getattr(sys, "stdlib_module_names", ()))
_LIB_MARKERS = ("/torch/", "/site-packages/", "/dist-packages/", "/lib/python3", "<frozen ", "/threading.py")


_LIB_HEADS = frozenset({"torch", "memprof", "numpy", "transformers", "accelerate", "triton", "tqdm", "runpy", "<frozen"})

def is_library_file(filename: str) -> bool:
    """Frames of torch, memprof's own machinery, installed packages and the standard library.

    torch.profiler writes paths relative to their ``sys.path`` entry (``torch/nn/modules/linear.py``);
    allocator history writes absolute ones; Windows paths use backslashes. memprof's built-in
    workloads (``memprof/workloads/``) are the user's model, not library code.
    """
    f = filename.replace("\\", "/")
    if "/_inductor/" not in f and "torchinductor" in f:
        return False  # generated code from torch.compile: the user's model, compiled
    if "memprof/workloads/" in f:
        return False
    if any(m in f for m in _LIB_MARKERS) or _MEMPROF_OWN.search(f):
        return True
    if f.startswith("/") or f[1:3] == ":/":
        return False
    head = f.split("/", 1)[0]
    return head in _LIB_HEADS or head.removesuffix(".py") in _STDLIB_NAMES or head.startswith("<")


# ---------------------------------------------------------------------------
# C++ frames (stacks="all")


def frame_label(filename: str, line: int, name: str) -> str:
    """'file.py:line:function'; a C++ frame (``stacks="all"``) without its argument list."""
    if str(filename).endswith(".py"):
        return f"{os.path.basename(filename)}:{line}:{name}"
    n = str(name)
    depth, cut = 0, len(n)
    for i, ch in enumerate(n):  # the first '(' outside template brackets ends the qualified name
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0 and not n.startswith("(anonymous", i):
            cut = i
            break
    base = os.path.basename(str(filename))
    return f"{n[:cut]}" + (f" ({base})" if base and base != "??" else "")


#: C++ frames that say nothing about who allocated: the unwinder, the allocator, tensor factories, runtimes.
_PLUMBING_PREFIXES = (
    "torch::unwind::", "torch::CapturedTraceback", "torch::(anonymous namespace)::gather", "c10::cuda::CUDACachingAllocator",
    "c10::CachingDeviceAllocator", "c10::", "at::empty", "at::detail::empty", "at::native::empty", "at::TensorBase::",
    "at::native::resize", "at::native::(anonymous namespace)::create_out", "at::(anonymous namespace)::create_out",
    "at::cuda::", "std::", "__libc", "_start", "start_thread", "clone", "_Py", "Py", "??", "THPVariable_", "pybind11::",
    "torch::autograd::python", "torch::autograd::THPVariable", "void at::native::", "cudaMalloc",
    "torch::cuda::(anonymous namespace)::gather", "at::TensorIteratorBase::", "at::TensorIterator::", "at::meta::",
    "pthread", "__clone",
)


def is_plumbing(name: str) -> bool:
    n = str(name).lstrip()
    head = n.split("(")[0]
    return ((not n) or n.startswith(_PLUMBING_PREFIXES) or "CUDACachingAllocator" in n or "unwind" in head
            or "set_output_raw_strided" in n or "create_out" in head)


# ---------------------------------------------------------------------------
# Interning stacks


class StackInterner:
    """Interns frame lists: each distinct stack stored once, frames once."""

    def __init__(self) -> None:
        self.frame_ids: dict[tuple[str, int, str], int] = {}
        self.frame_by_obj: dict[int, int] = {}
        self.stack_ids: dict[tuple[int, ...], int] = {}
        self.stack_by_obj: dict[tuple[int, ...], int] = {}
        self._keep: list[Any] = []  # keeps interned objects alive so ids stay unique
        self.stacks: list[tuple[int, ...]] = []

    def frame(self, f: Any) -> int:
        fid = self.frame_by_obj.get(id(f))
        if fid is not None:
            return fid
        if not isinstance(f, dict):
            raise MemprofError("a stack frame is not a dict: not a snapshot this tool understands")
        # escaped once here, so every report, table and page shows file text without control characters
        key = (printable(f.get("filename", "??")), limits.to_i64(f.get("line", 0) or 0), printable(f.get("name", "??")))
        fid = self.frame_ids.setdefault(key, len(self.frame_ids))
        self.frame_by_obj[id(f)] = fid
        self._keep.append(f)
        return fid

    def stack(self, frames: Any) -> int:
        if not frames:
            return -1
        # Same frame objects -> same stack, without looking inside the frames (the fast path:
        # torch shares frame dicts between tracebacks, so pickle memoises them).
        obj_key = tuple(map(id, frames))
        sid = self.stack_by_obj.get(obj_key)
        if sid is not None:
            return sid
        key = tuple(self.frame(f) for f in frames)
        sid = self.stack_ids.get(key)
        if sid is None:
            sid = len(self.stacks)
            self.stack_ids[key] = sid
            self.stacks.append(key)
        self.stack_by_obj[obj_key] = sid
        return sid

    def stacks_for(self, frame_lists: Sequence[Any]) -> np.ndarray:
        """Vectorised: intern each distinct list object once, then broadcast."""
        n = len(frame_lists)
        if n == 0:
            return np.zeros(0, dtype=np.int32)
        ids = np.fromiter(map(id, frame_lists), dtype=np.int64, count=n)
        uniq, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
        # Intern in order of first appearance, so stack ids do not depend on memory addresses
        # (and match the C loader's order).
        sid = np.empty(len(uniq), dtype=np.int32)
        for j in np.argsort(first, kind="stable"):
            sid[j] = self.stack(frame_lists[first[j]])
        return sid[inverse]

    def frames_frame(self) -> pd.DataFrame:
        keys = list(self.frame_ids)
        return pd.DataFrame(
            {
                "filename": pd.array([k[0] for k in keys], dtype=object),
                "line": np.array([k[1] for k in keys], dtype=np.int64),
                "name": pd.array([k[2] for k in keys], dtype=object),
            }
        )

    def csr(self) -> tuple[np.ndarray, np.ndarray]:
        lens = np.fromiter((len(s) for s in self.stacks), dtype=np.int64, count=len(self.stacks))
        offsets = np.zeros(len(self.stacks) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        flat = np.fromiter((f for s in self.stacks for f in s), dtype=np.int32, count=int(offsets[-1]))
        return offsets, flat
