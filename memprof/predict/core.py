"""Predict ``torch.cuda.max_memory_allocated``/``max_memory_reserved`` of a step without a GPU.

The step runs under ``torch._subclasses.fake_tensor.FakeTensorMode`` (no real memory is
touched), with a ``TorchDispatchMode`` that sees every aten op's outputs: each new storage is
one allocation of ``storage.nbytes()`` bytes, freed when its storage object dies (a weak
reference; torch preserves a storage's Python object for as long as the C++ storage lives,
autograd's saved tensors included). The resulting request stream goes through
:mod:`memprof.allocator.model`, the model of the CUDA caching allocator.

The stand-in device. On a CPU-only torch a fake *CUDA* tensor can run forward ops but not
backward (the autograd engine asks for a CUDA device guard and aborts the process), so the
tensors that would live on the GPU are fake ``meta`` tensors, and tensors the code puts on the
CPU on purpose (AdamW's ``step`` counters, generators) stay CPU and are not counted -- as on a GPU.
Two things CUDA would decide differently are set as CUDA would: AdamW runs ``foreach``
(the CUDA default), and ``autocast`` follows CUDA's op lists (``autocast_mode.cpp``:
matmul/linear family in the low-precision dtype; softmax, log_softmax, sum, pow, rsqrt, exp,
log, norms and losses in fp32; casts of leaf weights cached for the autocast region).

What FakeTensorMode cannot see, and the predictor therefore does not count:

* memory a kernel allocates for itself through the caching allocator (cuBLAS/cuBLASLt
  workspaces -- allocated once and kept, tens of MiB on Hopper; cuDNN/flash workspaces;
  reduction scratch); these are measured against real recordings in
  ``benchmarks/results/predict_vs_measured.md``;
* which SDPA backend CUDA would pick (flash / memory-efficient / math): the built-in naive
  attention and Transformer do not call SDPA; a user's step that does is traced with the meta
  kernels' choice;
* ``torch.compile``: the compiled graph's buffer reuse is Inductor's, not eager's -- refused.

Checked against ``memprof record`` on an H100 (benchmarks/results/predict_vs_measured.md, 15
recordings: naive attention, small and medium Transformers, fp32 and bf16, batch 4/8, context
512/2048): allocated within 0.16%, reserved within 0.5%; the simulated one-process bisection
finds the measured OOM limits (tests/data/gpu/predict/thresholds.json) exactly.
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from memprof.errors import MemprofError
from memprof.allocator.model import OP_ALLOC, OP_FREE, AllocConf, Requests, SimResult, simulate
from memprof.allocator.search import bisect
from memprof.predict.device import usable_memory

FAKE_DEVICE = torch.device("meta")  # the stand-in for cuda (see the module docstring)

# CUDA autocast policy (aten/src/ATen/autocast_mode.cpp), by the Python callables that reach it
_LOW = {"linear", "matmul", "mm", "bmm", "baddbmm", "addmm", "addbmm", "addmv", "mv", "einsum",
        "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
        "prelu", "chain_matmul", "linalg_multi_dot", "__matmul__", "__rmatmul__", "scaled_dot_product_attention"}
_FP32 = {"acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p", "reciprocal",
         "rsqrt", "sinh", "tan", "pow", "__pow__", "__rpow__", "softplus", "layer_norm", "group_norm", "norm",
         "cosine_similarity", "poisson_nll_loss", "cosine_embedding_loss", "nll_loss", "hinge_embedding_loss",
         "kl_div", "l1_loss", "smooth_l1_loss", "huber_loss", "mse_loss", "margin_ranking_loss",
         "soft_margin_loss", "triplet_margin_loss", "multi_margin_loss", "binary_cross_entropy_with_logits",
         "dist", "pdist", "cdist", "renorm", "logsumexp", "rms_norm"}
_FP32_OPT_DTYPE = {"softmax", "log_softmax", "cumprod", "cumsum", "sum", "prod"}


class _CudaAutocast(torch.overrides.TorchFunctionMode):
    """``torch.autocast('cuda', dtype)`` for tensors on the stand-in device."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype
        self.cache: dict[int, torch.Tensor] = {}

    def _cast(self, x: Any, dtype: torch.dtype) -> Any:
        if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != dtype and x.device == FAKE_DEVICE:
            if x.is_leaf and x.requires_grad and dtype == self.dtype:  # autocast's weight-cast cache
                k = id(x)
                c = self.cache.get(k)
                if c is None:  # (inside __torch_function__ this mode is off)
                    c = self.cache[k] = x.to(dtype)
                return c
            return x.to(dtype)
        if isinstance(x, (list, tuple)):
            # autocast's wrappers cast the arguments in one C++ call expression, which GCC
            # evaluates right to left: the weight is cast before the input (seen in H100 traces)
            return type(x)(reversed([self._cast(y, dtype) for y in reversed(x)]))
        return x

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _LOW:
            args, kwargs = self._cast(args, self.dtype), {k: self._cast(v, self.dtype) for k, v in kwargs.items()}
        elif name in _FP32:
            args, kwargs = self._cast(args, torch.float32), {k: self._cast(v, torch.float32) for k, v in kwargs.items()}
        elif name in _FP32_OPT_DTYPE and kwargs.get("dtype") is None:
            x = args[0] if args else None
            if isinstance(x, torch.Tensor) and x.dtype in (torch.float16, torch.bfloat16) and x.device == FAKE_DEVICE:
                kwargs = dict(kwargs, dtype=torch.float32)
        return func(*args, **kwargs)

    def __exit__(self, *exc: Any) -> Any:
        self.cache.clear()
        return super().__exit__(*exc)


def cuda_autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager[Any]:
    """The workloads' ``autocast_ctx`` for prediction."""
    from memprof.workloads import DTYPES

    if dtype == "fp32":
        return contextlib.nullcontext()
    if dtype not in DTYPES:
        raise MemprofError(f"unknown dtype {dtype!r} (use fp32 or bf16)")
    return _CudaAutocast(DTYPES[dtype])


class _Tracker(TorchDispatchMode):
    """Each new storage an op returns on the stand-in device is an allocation; its death a free."""

    def __init__(self, workspaces: tuple[int, ...] = ()) -> None:
        super().__init__()
        # one cuBLAS handle per thread, one workspace per handle: the main thread's at its first
        # cuBLAS call, the autograd engine thread's at its first in backward
        self.workspaces = {"main": workspaces, "autograd": workspaces[:1]}
        self.ops: list[tuple[int, int, int, str]] = []  # (op, rid, nbytes, phase)
        self.live: dict[int, tuple[Any, int]] = {}  # storage key -> (weakref, rid)
        self.rid_of: dict[int, int] = {}
        self.phase = "setup"
        self.next = 0

    def key(self, t: torch.Tensor) -> int:
        return int(t.untyped_storage()._cdata)

    def note(self, t: Any) -> None:
        if not isinstance(t, torch.Tensor) or t.device != FAKE_DEVICE:
            return
        st = t.untyped_storage()
        k = int(st._cdata)
        if k in self.live:
            return
        n = int(st.nbytes())
        rid = self.next
        self.next += 1
        ops = self.ops

        def gone(_r: Any, k: int = k, rid: int = rid) -> None:
            if self.live.pop(k, None) is not None:
                ops.append((OP_FREE, rid, 0, ""))

        self.live[k] = (weakref.ref(st, gone), rid)
        self.rid_of[k] = rid
        if n > 0:
            ops.append((OP_ALLOC, rid, n, self.phase))

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            self.note(t)
        if func in _CUBLAS_OPS:
            thread = "autograd" if torch._C._current_graph_task_id() != -1 else "main"
            for n in self.workspaces.get(thread, ()):
                rid = self.next
                self.next += 1
                self.ops.append((OP_ALLOC, rid, n, "cublas_workspace"))
            self.workspaces[thread] = ()
        extra = _CUDA_TEMPORARIES.get(func)
        if extra is not None:
            n = extra(args)
            if n:
                rid = self.next
                self.next += 1
                self.ops.append((OP_ALLOC, rid, n, self.phase))
                self.ops.append((OP_FREE, rid, 0, ""))
        return out


def _nbytes(t: Any) -> int:
    return int(t.numel() * t.element_size()) if isinstance(t, torch.Tensor) and t.device == FAKE_DEVICE else 0


_aten = torch.ops.aten
_CUBLAS_OPS = {_aten.mm.default, _aten.bmm.default, _aten.addmm.default, _aten.baddbmm.default,
               _aten.addbmm.default, _aten.addmv.default, _aten.mv.default}

#: The cuBLAS workspace, allocated through the caching allocator at a thread's first cuBLAS call
#: and kept: 32 MiB on an H100 with torch 2.11 (``CUBLAS_WORKSPACE_CONFIG`` default ``:4096:8``
#: on sm90). A backward step has two (the autograd engine's device thread has its own handle):
#: snapshots/h100/* show two 33554432-byte blocks alive before every recorded window.
CUBLAS_WORKSPACES_H100 = (32 * 1024 * 1024,)

#: Temporaries a CUDA kernel allocates (and frees) inside one op, beyond its outputs, which
#: the meta kernels do not make: op -> bytes from its arguments.
#: ``softmax_backward_cuda_out`` (aten/src/ATen/native/cuda/SoftMax.cu) computes
#: ``tmp = grad * output`` before the reduction.
_CUDA_TEMPORARIES: dict[Any, Callable[[tuple], int]] = {
    torch.ops.aten._softmax_backward_data.default: lambda a: _nbytes(a[0]),
}


@dataclass
class Prediction:
    """A predicted step: the simulator's result plus what was alive at the predicted peak.

    ``by_category`` -- bytes (block sizes) alive at the allocated peak per category
    (parameters, gradients, optimizer_state, inputs, activations); ``by_phase`` -- bytes
    alive at the peak by the phase that allocated them.
    """

    sim: SimResult
    requests: Requests
    window_start: int
    device_memory: int | None
    by_category: dict[str, int] = field(default_factory=dict)
    by_phase: dict[str, int] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def max_memory_allocated(self) -> int:
        return self.sim.max_allocated

    @property
    def max_memory_reserved(self) -> int:
        return self.sim.max_reserved

    @property
    def fits(self) -> bool:
        return self.sim.oom is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "predicted_max_memory_allocated": int(self.sim.max_allocated),
            "predicted_max_memory_reserved": int(self.sim.max_reserved),
            "fits": self.fits,
            "device_memory": self.device_memory,
            "oom_request": self.sim.oom,
            "alloc_conf": self.sim.conf.describe(),
            "by_category": self.by_category,
            "by_phase": self.by_phase,
            "requests": int(len(self.requests)),
            "options": self.options,
            "not_counted": "kernel scratch other than the cuBLAS workspaces and the softmax-backward temporary (cuDNN, reductions), SDPA backend choice; see memprof.predict",
        }


def _run_captured(body: Callable[[_Tracker], dict[int, str]], workspaces: tuple[int, ...] = CUBLAS_WORKSPACES_H100
                  ) -> tuple[list[tuple[int, int, int, str]], dict[int, str], int]:
    from torch._subclasses.fake_tensor import FakeTensorMode

    tr = _Tracker(workspaces)
    with FakeTensorMode(allow_non_fake_inputs=True):
        with tr:
            cats = body(tr)
    return tr.ops, cats, tr.window_start  # type: ignore[attr-defined]


def _to_requests(ops: list[tuple[int, int, int, str]], cats: dict[int, str]) -> tuple[Requests, list[str]]:
    seen: set[int] = set()
    kept = []
    for o in ops:  # a free of a zero-byte storage (never allocated) is dropped
        if o[0] == OP_ALLOC:
            seen.add(o[1])
            kept.append(o)
        elif o[1] in seen:
            kept.append(o)
    phases = sorted({o[3] for o in kept if o[0] == OP_ALLOC})
    names = ["activations", "parameters", "gradients", "optimizer_state", "inputs", "kernel_workspace"]
    code = {n: i for i, n in enumerate(names)}
    req = Requests(
        op=np.array([o[0] for o in kept], dtype=np.int8),
        rid=np.array([o[1] for o in kept], dtype=np.int64),
        size=np.array([o[2] for o in kept], dtype=np.int64),
        stream=np.zeros(len(kept), dtype=np.int64),
        pool=np.zeros(len(kept), dtype=np.int64),
        category=np.array([code.get(cats.get(o[1], "kernel_workspace" if o[3] == "cublas_workspace" else "activations"), 0)
                           for o in kept], dtype=np.int8),
        categories=tuple(names),
    )
    req.phase = np.array([o[3] for o in kept], dtype=object)  # type: ignore[attr-defined]
    return req, phases


def _alive_at(req: Requests, sim: SimResult, at: int) -> tuple[dict[str, int], dict[str, int]]:
    """Bytes (block sizes) alive just after request ``at``, by category and by phase."""
    n = min(at + 1, len(req.op))
    op, rid = req.op[:n], req.rid[:n]
    alive: dict[int, int] = {}
    for i in range(n):
        if op[i] == OP_ALLOC:
            alive[int(rid[i])] = i
        else:
            alive.pop(int(rid[i]), None)
    by_cat: dict[str, int] = {}
    by_phase: dict[str, int] = {}
    phase = getattr(req, "phase", None)
    for i in alive.values():
        b = int(sim.block_size[i])
        c = req.categories[int(req.category[i])] if req.category is not None else "activations"
        by_cat[c] = by_cat.get(c, 0) + b
        if phase is not None:
            p = str(phase[i])
            by_phase[p] = by_phase.get(p, 0) + b
    return dict(sorted(by_cat.items(), key=lambda kv: -kv[1])), dict(sorted(by_phase.items(), key=lambda kv: -kv[1]))


def _finish(ops: list[tuple[int, int, int, str]], cats: dict[int, str], window: int, alloc_conf: str | None,
            device_memory: int | None, options: dict[str, Any]) -> Prediction:
    req, _ = _to_requests(ops, cats)
    conf = AllocConf.parse(alloc_conf) if alloc_conf else AllocConf()
    # the window starts at the first request made after the warm-up (reset_peak_memory_stats)
    w = _window_index(ops, window, req)
    sim = simulate(req, conf, device_memory=device_memory, use_recorded_addresses=False, reset_peak_at=w)
    at = sim.max_allocated_idx if sim.max_allocated_idx >= 0 else max(w - 1, 0)
    by_cat, by_phase = _alive_at(req, sim, at)
    return Prediction(sim=sim, requests=req, window_start=w, device_memory=device_memory,
                      by_category=by_cat, by_phase=by_phase, options=options)


def _window_index(ops: list[tuple[int, int, int, str]], window: int, req: Requests) -> int:
    """Index in ``req`` of the first request at or after raw op ``window``."""
    seen: set[int] = set()
    k = 0
    for j, o in enumerate(ops):
        if j >= window:
            return k
        if o[0] == OP_ALLOC:
            seen.add(o[1])
            k += 1
        elif o[1] in seen:
            k += 1
    return k


@contextlib.contextmanager
def _created_on_fake_device() -> Iterator[None]:
    """Modules are built directly on the stand-in device (moving fake parameters across
    devices would swap tensors, which fake tensors refuse); CPU generators stay CPU."""
    module_to = torch.nn.Module.to

    def to(self: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.nn.Module:
        dev = kwargs.get("device", args[0] if args else None)
        if isinstance(dev, (str, torch.device)) and torch.device(dev) == FAKE_DEVICE and not kwargs.get("dtype"):
            return self  # already there
        return module_to(self, *args, **kwargs)

    prev = torch.get_default_device()
    torch.set_default_device(FAKE_DEVICE)
    torch.nn.Module.to = to  # type: ignore[method-assign, assignment]  # one plain function for the overloads
    try:
        yield
    finally:
        torch.set_default_device(prev if prev.type != "cpu" else None)
        torch.nn.Module.to = module_to  # type: ignore[method-assign]


@contextlib.contextmanager
def _cuda_like_workloads() -> Iterator[None]:
    """Workloads use CUDA's autocast policy on the stand-in device."""
    import memprof.workloads.attention as att
    import memprof.workloads.transformer as tf

    saved = (att.autocast_ctx, tf.autocast_ctx)
    att.autocast_ctx = tf.autocast_ctx = cuda_autocast
    try:
        yield
    finally:
        att.autocast_ctx, tf.autocast_ctx = saved


def predict_workload(kind: str, options: dict[str, Any], warmup: int = 2, steps: int = 2,
                     alloc_conf: str | None = None, device_memory: int | None = None) -> Prediction:
    """Predict ``memprof record KIND OPTIONS``: setup, ``warmup`` steps, then the peaks over
    ``steps`` steps (the recorder resets the peak counters after its warm-up)."""
    from memprof.workloads import build

    opts = dict(options)
    if opts.get("compile"):
        raise MemprofError("predict runs eager steps only: torch.compile's buffer reuse is Inductor's, not eager's")
    if kind == "attention" and opts.get("impl", "naive") != "naive":
        raise MemprofError("predict models attention --impl naive only (compiled and sdpa pick kernels on the GPU)")
    w = build(kind, **opts)

    def body(tr: _Tracker) -> dict[int, str]:
        with _created_on_fake_device():
            w.setup(FAKE_DEVICE)
        opt = getattr(w, "opt", None)
        if opt is not None:  # torch's CUDA default; on the stand-in device torch would pick the for-loop
            for g in opt.param_groups:
                g["foreach"] = True
        for _ in range(warmup):
            tr.phase = "step"
            w.step(_phase_setter(tr))
        tr.window_start = len(tr.ops)  # type: ignore[attr-defined]
        for _ in range(steps):
            w.step(_phase_setter(tr))
        cats: dict[int, str] = {}
        for cat, ts in w.tensors().items():
            for t in ts:
                if isinstance(t, torch.Tensor) and t.device == FAKE_DEVICE:
                    k = int(t.untyped_storage()._cdata)
                    if k in tr.rid_of:
                        cats[tr.rid_of[k]] = cat
        w.teardown()
        return cats

    with _cuda_like_workloads():
        ops, cats, window = _run_captured(body)
    return _finish(ops, cats, window, alloc_conf, device_memory, {"kind": kind, **opts})


def _phase_setter(tr: _Tracker) -> Callable[[str], contextlib.AbstractContextManager[Any]]:
    @contextlib.contextmanager
    def phase(name: str) -> Iterator[None]:
        old = tr.phase
        tr.phase = name
        try:
            yield
        finally:
            tr.phase = old

    return phase


def predict(step_fn: Callable[..., Any], *inputs: Any, warmup: int = 1, steps: int = 1,
            alloc_conf: str | None = None, device_memory: int | None = None) -> Prediction:
    """Predict the CUDA memory of ``step_fn(*inputs)`` on this machine, GPU or not.

    Tensors and ``nn.Module``s among ``inputs`` are copied to fake tensors (the originals are not
    touched); ``step_fn`` runs ``warmup + steps`` times; the peaks are those of the last ``steps``
    (as after ``torch.cuda.reset_peak_memory_stats()``). Tensors the step creates with
    ``device='cuda'`` are counted too.
    """
    def body(tr: _Tracker) -> dict[int, str]:
        fake_inputs: list[Any] = []
        cats: dict[int, str] = {}
        tr.phase = "inputs"
        for x in inputs:
            if isinstance(x, torch.nn.Module):
                m = _fake_module(x)
                for p in m.parameters():
                    cats[tr.rid_of.get(int(p.untyped_storage()._cdata), -1)] = "parameters"
                fake_inputs.append(m)
            elif isinstance(x, torch.Tensor):
                t = x.detach().to(FAKE_DEVICE).requires_grad_(x.requires_grad)
                cats[tr.rid_of.get(int(t.untyped_storage()._cdata), -1)] = "inputs"
                fake_inputs.append(t)
            else:
                fake_inputs.append(x)
        tr.phase = "step"
        with _redirect_cuda():
            for _ in range(warmup):
                step_fn(*fake_inputs)
            tr.window_start = len(tr.ops)  # type: ignore[attr-defined]
            for _ in range(steps):
                step_fn(*fake_inputs)
        for m in fake_inputs:
            if isinstance(m, torch.nn.Module):
                for p in m.parameters():
                    if p.grad is not None and p.grad.device == FAKE_DEVICE:
                        cats[tr.rid_of.get(int(p.grad.untyped_storage()._cdata), -1)] = "gradients"
        return cats

    ops, cats, window = _run_captured(body)
    return _finish(ops, cats, window, alloc_conf, device_memory, {"step_fn": getattr(step_fn, "__name__", "step")})


def _fake_module(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` whose parameters and buffers are fake tensors on the stand-in device
    (the real ones are neither copied nor touched; ``Module.to`` would swap fake tensors)."""
    memo: dict[int, Any] = {}
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) in memo:
            continue
        f = torch.empty_strided(tuple(t.shape), tuple(t.stride()), dtype=t.dtype, device=FAKE_DEVICE)
        memo[id(t)] = torch.nn.Parameter(f, requires_grad=t.requires_grad) if isinstance(t, torch.nn.Parameter) else f
    return copy.deepcopy(module, memo)


class _RedirectCuda(torch.overrides.TorchFunctionMode):
    """``device='cuda'`` / ``.cuda()`` / ``.to('cuda')`` in a user's step go to the stand-in device."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = dict(kwargs or {})
        dev = kwargs.get("device")
        if dev is not None and torch.device(dev).type == "cuda":
            kwargs["device"] = FAKE_DEVICE
        name = getattr(func, "__name__", "")
        if name == "cuda":
            return func.__self__.to(FAKE_DEVICE) if hasattr(func, "__self__") else args[0].to(FAKE_DEVICE)
        if name == "to":
            args = tuple(FAKE_DEVICE if (isinstance(a, (str, torch.device)) and torch.device(a).type == "cuda") else a
                         for a in args)
        return func(*args, **kwargs)


@contextlib.contextmanager
def _redirect_cuda() -> Iterator[None]:
    with _RedirectCuda():
        yield


def capture_workload(kind: str, options: dict[str, Any], warmup: int = 0, steps: int = 1,
                     workspaces: tuple[int, ...] = CUBLAS_WORKSPACES_H100) -> list[tuple[int, int, int, str]]:
    """The raw request stream (op, rid, bytes, phase) of setup + ``warmup + steps`` steps."""
    from memprof.workloads import build

    w = build(kind, **options)

    def body(tr: _Tracker) -> dict[int, str]:
        with _created_on_fake_device():
            w.setup(FAKE_DEVICE)
        opt = getattr(w, "opt", None)
        if opt is not None:
            for g in opt.param_groups:
                g["foreach"] = True
        tr.window_start = 0  # type: ignore[attr-defined]
        for _ in range(warmup + steps):
            w.step(_phase_setter(tr))
        w.teardown()
        return {}

    with _cuda_like_workloads():
        ops, _, _ = _run_captured(body, workspaces)
    return ops


def one_process_trials(kind: str, options: dict[str, Any], param: str, values: list[int] | None, device_memory: int,
                       lo: int | None = None, hi: int | None = None, step: int = 1,
                       alloc_conf: str | None = None) -> dict[str, Any]:
    """Simulate a bisection run in one process, as a person finds the limit on a real GPU: each
    trial builds the workload, runs one step, then drops everything and calls ``empty_cache()``;
    an OOM ends the trial (its tensors are freed). The cuBLAS workspaces are made by the first
    trial and kept, in whatever segment they landed -- which is why the limit found this way
    can sit below the fresh-process limit. With ``values`` the trials run in that order;
    otherwise it bisects from ``lo`` (fits) to ``hi`` (fails) in steps of ``step``.
    """
    from memprof.allocator.model import Allocator, OutOfMemory

    conf = AllocConf.parse(alloc_conf) if alloc_conf else AllocConf()
    al = Allocator(conf, device_memory=device_memory)
    state = {"first": True, "rid": 0}
    results: dict[int, bool] = {}

    def trial(v: int) -> bool:
        ops = capture_workload(kind, {**options, param: v}, workspaces=CUBLAS_WORKSPACES_H100 if state["first"] else ())
        if state["first"]:
            # the workspaces live for the whole process: they are never freed by a trial
            keep = {o[1] for o in ops if o[3] == "cublas_workspace"}
        else:
            keep = set()
        state["first"] = False
        base = state["rid"]
        state["rid"] += max((o[1] for o in ops), default=0) + 1
        live: set[int] = set()
        ok = True
        for o, rid, n, _ in ops:
            r = base + rid
            if o == OP_ALLOC:
                try:
                    al.apply(o, r, n)
                except OutOfMemory:
                    ok = False
                    break
                live.add(r)
            elif r in live:
                al.apply(o, r, n)
                live.discard(r)
        for r in sorted(live):
            if r - base not in keep:
                al.apply(OP_FREE, r, 0)
        al.empty_cache()
        results[v] = ok
        return ok

    if values is not None:
        for v in values:
            trial(v)
        return {"parameter": param, "trials": results}
    assert lo is not None and hi is not None
    if not trial(lo) or trial(hi):
        return {"parameter": param, "max_fitting": None, "first_failing": None, "trials": results}
    lo, hi = bisect(lo, hi, trial, step=step)
    return {"parameter": param, "max_fitting": lo, "first_failing": hi, "trials": results}


def find_max(kind: str, options: dict[str, Any], param: str, device_memory: int, lo: int = 1, hi: int | None = None,
             alloc_conf: str | None = None, warmup: int = 1, steps: int = 1, multiple: int = 1,
             start: int | None = None) -> dict[str, Any]:
    """The largest ``param`` (batch, seq_len or context) whose predicted step fits ``device_memory``
    in a fresh process; returns {parameter, max_fitting, first_failing, tried}.

    From ``start`` (default ``lo``) the reserved peak is predicted at two sizes and extrapolated
    (quadratic in seq_len/context for attention, linear otherwise) to bracket the limit, which is
    then bisected over multiples of ``multiple``.
    """
    tried: dict[int, bool] = {}
    peaks: dict[int, int] = {}

    def fits(v: int) -> bool:
        if v not in tried:
            p = predict_workload(kind, {**options, param: v}, warmup=warmup, steps=steps, alloc_conf=alloc_conf,
                                 device_memory=device_memory)
            tried[v] = p.fits
            if p.fits:
                peaks[v] = p.max_memory_reserved
        return tried[v]

    def snap(v: float) -> int:
        return max(lo, int(v) // multiple * multiple)

    v0 = snap(start or lo)
    if not fits(v0):
        hi_, lo_ = v0, lo
        if not fits(lo_):
            return {"parameter": param, "max_fitting": None, "first_failing": lo_, "tried": _tried(tried)}
        lo = lo_
        hi = hi_
    else:
        lo = v0
        v1 = snap(v0 * 2) if v0 * 2 >= v0 + multiple else v0 + multiple
        if fits(v1):
            k = 2.0 if (kind == "attention" and param == "seq_len") else 1.0
            lo = v1
            for _ in range(6):  # secant steps on the two largest sizes that fit
                x0, x1 = sorted(peaks)[-2:]
                c = (peaks[x1] - peaks[x0]) / (x1 ** k - x0 ** k)
                est = ((device_memory - (peaks[x1] - c * x1 ** k)) / c) ** (1 / k) if c > 0 else x1 * 2
                guess = snap(min(est, x1 * 4))
                if guess <= lo:
                    guess = lo + multiple
                if fits(guess):
                    lo = guess
                else:
                    hi = guess
                    break
            step = multiple
            while hi is None:
                cand = snap(lo + step)
                if fits(cand):
                    lo = cand
                    step *= 2
                else:
                    hi = cand
        else:
            hi = v1
    assert hi is not None
    lo, hi = bisect(lo, hi, fits, step=multiple)
    return {"parameter": param, "max_fitting": lo, "first_failing": hi, "tried": _tried(tried)}


def workload_oom(meta: dict[str, Any]) -> dict[str, Any] | None:
    """Where a built-in workload recorded by ``memprof record`` runs out of memory on its device in
    a fresh process, by :func:`find_max` (seq_len for attention, batch for a Transformer)."""
    w = meta.get("workload") or {}
    kind = w.get("kind")
    total = (meta.get("device") or {}).get("total_memory_bytes")
    if kind not in ("attention", "transformer") or not total or w.get("compile") or w.get("impl", "naive") != "naive":
        return None
    keys = {"attention": ("impl", "seq_len", "d", "batch", "causal", "mode", "dtype"),
            "transformer": ("size", "mode", "dtype", "context", "batch", "vocab", "d_model", "num_layers", "num_heads",
                            "d_ff", "positions")}[kind]
    opts = {k: w[k] for k in keys if w.get(k) is not None}
    param = "seq_len" if kind == "attention" else "batch"
    dm = usable_memory(total)
    r = find_max(kind, opts, param, dm, lo=1, multiple=64 if param == "seq_len" else 1, start=opts.get(param))
    return {"parameter": param, "max_fitting": r["max_fitting"], "first_failing": r["first_failing"],
            "device_total_bytes": int(total), "device_memory": dm, "source": "predict",
            "note": f"predicted without a GPU (memprof predict, fresh process, {dm:,} B usable); "
                    f"{param} {r['first_failing']} is the first that does not fit"}


def _tried(tried: dict[int, bool]) -> dict[str, bool]:
    return {str(k): v for k, v in sorted(tried.items())}
