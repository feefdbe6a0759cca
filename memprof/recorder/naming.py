"""Naming what a recording holds: parameters, gradients, optimizer state, and the module running.

PyTorch's allocator history knows addresses, sizes and stacks, not *what* a block is. While a
window is open, memprof watches the user's own objects without any change to their code:

* ``nn.Module.__call__`` through the global forward hooks
  (``torch.nn.modules.module.register_module_forward_pre_hook`` / ``..._forward_hook``): the
  first module called with no module running is a root; its ``named_modules()`` names every
  submodule (``blocks.1.attn.qkv``) and its ``named_parameters()`` / ``named_buffers()`` every
  parameter. Each call is logged as an enter/exit pair (host clock, µs) with the innermost user
  frame that made the call;
* the autograd nodes a module call created (sequence numbers between its pre- and post-hook,
  ``Node._sequence_nr()``) get a pre-hook and a hook, so every node's execution in backward is
  logged as an interval with the module whose forward made it and that forward's call site
  (the "forward stack" of a backward allocation);
* ``Optimizer.step`` through the global step hooks: each step's interval, and the tensors it
  holds by name: ``NAME.grad`` before the step, ``NAME (exp_avg)`` etc. after it.

Compiled code (``torch.compile``): the module hooks do nothing while dynamo traces, and the
frames of inductor's generated code (``/tmp/torchinductor_*/…/c….py:123:call``) are mapped back
to the model's source: inductor writes ``# Topologically Sorted Source Nodes: [linear, …]`` next
to each buffer it allocates (or above the fused kernel that fills it), and an inductor pre-grad
pass installed by :func:`install_compile_map` notes the innermost user frame of each node's
``stack_trace`` by node name. :func:`map_compiled_frames` stores ``compiled_sites``
``[generated file, line, user file, line, function]`` with the names.

A tensor is logged as an *observation* ``(time_us, storage address, nbytes, name, category)``;
the analysis (:mod:`memprof.analysis.attribution`) matches each to the allocation alive at that address
at that time. Everything is stored inside the snapshot dict under :data:`KEY` as plain lists
(PyTorch's viewer ignores the extra key), so the file alone carries the names.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
import weakref
from typing import Any, Callable

import torch
from torch.nn.modules import module as _module
from torch.optim import optimizer as _optimizer

from memprof.snapshot.schema import ATTRIBUTION_KEY as KEY

VERSION = 1
_LIB_PARTS = (os.sep + "torch" + os.sep, os.sep + "site-packages" + os.sep, os.sep + "dist-packages" + os.sep)
_MEMPROF_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_STDLIB = os.path.dirname(os.__file__)


_NODE_SITES: dict[str, tuple[str, int, str]] = {}
_SOURCE_NODES = re.compile(r"#\s*Topologically Sorted Source Nodes: \[([^\]]*)\]")
_TRACE_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')
_CALL = re.compile(r"^\s*(\w+)(?:\.run)?\(")
_KERNEL_DEF = re.compile(r"^(\w+)\s*=\s*async_compile\.")


def _note_graph(graph: Any) -> None:
    """inductor pre-grad pass: remember each node's innermost user frame by node name (changes nothing)."""
    try:
        for node in graph.nodes:
            st = node.meta.get("stack_trace") if hasattr(node, "meta") else None
            if not st:
                continue
            user = [(f, int(ln), fn) for f, ln, fn in _TRACE_FRAME.findall(st) if _is_user_file(f)]
            if user:
                _NODE_SITES[str(node.name)] = user[-1]
    except Exception:  # noqa: BLE001 - never break a compile
        pass


def install_compile_map(force_import: bool = False) -> None:
    """Install :func:`_note_graph` as inductor's pre-grad pass unless the user has one.

    Importing inductor takes seconds: without ``force_import`` this only acts when it is loaded
    already (:meth:`Namer.start` also wraps ``torch.compile`` to install it when a compile begins).
    """
    if not force_import and "torch._inductor.config" not in sys.modules:
        return
    try:
        from torch._inductor import config
    except Exception:  # noqa: BLE001 - no inductor in this build
        return
    if getattr(config, "pre_grad_custom_pass", None) is None:
        config.pre_grad_custom_pass = _note_graph


def _generated_site(lines: list[str], line: int, kernels: dict[str, list[str]]) -> tuple[str, int, str] | None:
    """The user site of the buffer allocated at ``line`` (1-based) of an inductor output file."""
    for k in range(line, min(line + 16, len(lines))):  # the comment or the kernel call after the allocation
        text = lines[k]
        m = _SOURCE_NODES.search(text)
        names = m.group(1).split(", ") if m else None
        if names is None:
            c = _CALL.match(text)
            names = kernels.get(c.group(1)) if c else None
        if names:
            for n in names:
                if n.strip() in _NODE_SITES:
                    return _NODE_SITES[n.strip()]
            return None
    return None


_GENERATED_NAME = re.compile(r"(^|/)c[a-z0-9]{40,}\.py$")


def is_generated(filename: str) -> bool:
    """An inductor output-code file (``/tmp/torchinductor_USER/ab/cab….py`` or under ``TORCHINDUCTOR_CACHE_DIR``)."""
    f = filename.replace("\\", "/")
    return "/_inductor/" not in f and ("torchinductor" in f or bool(_GENERATED_NAME.search(f)))


def map_compiled_frames(snapshot: dict[str, Any]) -> list[list[Any]]:
    """[generated file, line, user file, line, function] for each inductor frame in ``snapshot``."""
    if not _NODE_SITES:
        return []
    wanted: set[tuple[str, int]] = set()

    def scan(frames: Any) -> None:
        for f in frames or []:
            fn = f.get("filename", "") if isinstance(f, dict) else ""
            if is_generated(fn):
                wanted.add((fn, int(f.get("line", 0))))

    for trace in snapshot.get("device_traces") or []:
        for e in trace:
            scan(e.get("frames"))
    for seg in snapshot.get("segments") or []:
        for b in seg.get("blocks") or []:
            scan(b.get("frames"))
    out: list[list[Any]] = []
    files: dict[str, tuple[list[str], dict[str, list[str]]]] = {}
    for fn, line in sorted(wanted):
        if fn not in files:
            try:
                with open(fn, encoding="utf-8", errors="replace") as fh:
                    lines = fh.read().splitlines()
            except OSError:
                lines = []
            kernels: dict[str, list[str]] = {}
            last: list[str] | None = None
            for text in lines:
                m = _SOURCE_NODES.search(text)
                if m:
                    last = m.group(1).split(", ")
                d = _KERNEL_DEF.match(text)
                if d and last:
                    kernels[d.group(1)] = last
                    last = None
            files[fn] = (lines, kernels)
        site = _generated_site(files[fn][0], line, files[fn][1])
        if site is not None:
            out.append([fn, line, site[0], site[1], site[2]])
    return out


def _workspace_sizes() -> list[int]:
    """cuBLAS and cuBLASLt workspace sizes: torch allocates them through the caching allocator."""
    out = []
    for fn in ("_cuda_getCublasWorkspaceSize", "_cuda_getCublasLtWorkspaceSize"):
        f = getattr(torch._C, fn, None)
        try:
            if f is not None and int(f()) > 0:
                out.append(int(f()))
        except (RuntimeError, TypeError):
            continue
    return out


def _seq() -> int:
    """The autograd engine's next sequence number on this thread (0 where this torch cannot say)."""
    fn = getattr(torch._C._autograd, "_get_sequence_nr", None)
    return int(fn()) if fn is not None else 0


def _now() -> int:
    return time.time_ns() // 1000


def _plain(name: str) -> str:
    """A name without torch.compile's wrapper: '_orig_mod.blocks.0' -> 'blocks.0' (eager and compiled runs match)."""
    return ".".join(p for p in name.split(".") if p != "_orig_mod")


def _is_user_file(fn: str) -> bool:
    if fn.startswith("<") or fn.startswith(_STDLIB):
        return False
    if fn.startswith(_MEMPROF_DIR):
        return fn.startswith(os.path.join(_MEMPROF_DIR, "workloads"))
    return not any(p in fn for p in _LIB_PARTS)


class Namer:
    """Collects names and module context for one recording window (see the module docstring)."""

    def __init__(self, device_type: str) -> None:
        self.device_type = device_type
        self.thread = threading.get_ident()
        self.paths: list[str] = []
        self._path_code: dict[str, int] = {}
        self.sites: list[list[Any]] = []
        self._site_code: dict[tuple[str, int, str], int] = {}
        self.roots: list[dict[str, Any]] = []
        self.fwd: list[list[int]] = []  # [time_us, path code, +1 enter / -1 exit, site code]
        self.bwd: list[list[int]] = []  # [time_us, path code (-1 at a node's end), site code]
        self.opt: list[list[int]] = []  # [time_us, +1 / -1]
        self.obs: list[list[Any]] = []  # [time_us, addr, nbytes, name, category]
        self._module_path: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()
        self._param_name: dict[int, tuple[weakref.ref, str]] = {}
        self._root_refs: list[weakref.ref] = []
        self._optims: list[weakref.ref] = []
        self._stack: list[tuple[int, int, int, list[Any]]] = []  # (path code, sequence nr at entry, site code, frontier)
        self._claimed: set[int] = set()
        self._handles: list[Any] = []
        self.active = False

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> "Namer":
        self._patch_dataloader()
        self._patch_compile()
        self._handles = [
            _module.register_module_forward_pre_hook(self._pre),
            _module.register_module_forward_hook(self._post, always_call=True),
            _optimizer.register_optimizer_step_pre_hook(self._opt_pre),
            _optimizer.register_optimizer_step_post_hook(self._opt_post),
        ]
        self.active = True
        return self

    def stop(self) -> dict[str, Any]:
        """Remove the hooks, name what is alive now, and return the plain-data record (:data:`KEY`)."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self._unpatch_dataloader()
        self._unpatch_compile()
        if self.active:
            for ref in self._root_refs:
                m = ref()
                if m is not None:
                    self._observe_module(m)
            for ref in self._optims:
                o = ref()
                if o is not None:
                    self._observe_optimizer(o, grads=True)
        self.active = False
        return self.record()

    def record(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "device_type": self.device_type,
            "modules": list(self.paths),
            "roots": list(self.roots),
            "sites": [list(s) for s in self.sites],
            "forward": [list(r) for r in self.fwd],
            "backward": [list(r) for r in self.bwd],
            "optimizer": [list(r) for r in self.opt],
            "tensors": [list(r) for r in self.obs],
            "workspaces": _workspace_sizes() if self.device_type == "cuda" else [],
        }

    # -- torch.compile -------------------------------------------------------------------
    def _patch_compile(self) -> None:
        orig = torch.compile

        def compile(*args: Any, **kwargs: Any) -> Any:  # noqa: A001 - stands in for torch.compile
            install_compile_map(force_import=True)
            return orig(*args, **kwargs)

        compile.__memprof_orig__ = orig  # type: ignore[attr-defined]
        compile.__doc__ = orig.__doc__
        self._compile_orig: Callable[..., Any] | None = orig
        torch.compile = compile

    def _unpatch_compile(self) -> None:
        orig = getattr(self, "_compile_orig", None)
        if orig is not None and getattr(torch.compile, "__memprof_orig__", None) is orig:
            torch.compile = orig  # type: ignore[assignment]
        self._compile_orig = None

    # -- data ----------------------------------------------------------------------------
    def _patch_dataloader(self) -> None:
        """Name the tensors a DataLoader's dataset holds (``dataset.data``) when iteration starts."""
        from torch.utils.data import DataLoader

        orig = DataLoader.__iter__
        self._dl_iter: Callable[..., Any] | None = orig
        namer = self

        def __iter__(dl: Any) -> Any:
            if namer.active:
                namer._observe_dataset(getattr(dl, "dataset", None))
            return orig(dl)

        __iter__.__memprof_orig__ = orig  # type: ignore[attr-defined]
        DataLoader.__iter__ = __iter__  # type: ignore[method-assign]

    def _unpatch_dataloader(self) -> None:
        from torch.utils.data import DataLoader

        orig = getattr(self, "_dl_iter", None)
        if orig is not None and getattr(DataLoader.__iter__, "__memprof_orig__", None) is orig:
            DataLoader.__iter__ = orig  # type: ignore[method-assign, assignment]  # restoring the monkeypatched method
        self._dl_iter = None

    def _observe_dataset(self, ds: Any, prefix: str = "dataset", depth: int = 0) -> None:
        try:
            items = list(vars(ds).items())[:64] if hasattr(ds, "__dict__") else []
        except TypeError:
            return
        for k, v in items:
            if isinstance(v, torch.Tensor):
                self._observe(v, f"{prefix}.{k}", "input")
            elif isinstance(v, (tuple, list)) and len(v) <= 16:
                for i, t in enumerate(v):
                    if isinstance(t, torch.Tensor):
                        self._observe(t, f"{prefix}.{k}[{i}]", "input")
            elif depth < 2 and k == "dataset":  # Subset, ConcatDataset-like wrappers
                self._observe_dataset(v, f"{prefix}.dataset", depth + 1)

    # -- codes ---------------------------------------------------------------------------
    def _code(self, path: str) -> int:
        c = self._path_code.get(path)
        if c is None:
            c = self._path_code[path] = len(self.paths)
            self.paths.append(path)
        return c

    def _site(self) -> int:
        f: Any = sys._getframe(2)
        while f is not None:
            fn = f.f_code.co_filename
            if _is_user_file(fn):
                key = (fn, int(f.f_lineno or 0), f.f_code.co_name)
                c = self._site_code.get(key)
                if c is None:
                    c = self._site_code[key] = len(self.sites)
                    self.sites.append(list(key))
                return c
            f = f.f_back
        return -1

    # -- naming --------------------------------------------------------------------------
    def _path(self, m: torch.nn.Module) -> str:
        p = self._module_path.get(m)
        if p is not None:
            return p
        if self._stack:
            parent = self.paths[self._stack[-1][0]]
            base = f"{parent}.{type(m).__name__}" if parent else type(m).__name__
        else:
            base = "" if not self.roots else type(m).__name__
            taken = {r["path"] for r in self.roots}
            k = 1
            while base in taken:
                k += 1
                base = f"{type(m).__name__}#{k}"
            self.roots.append({"path": base, "class": type(getattr(m, "_orig_mod", m)).__name__})
            self._root_refs.append(weakref.ref(m))
        for name, sub in m.named_modules(remove_duplicate=False):
            full = ".".join(x for x in (base, _plain(name)) if x)
            if sub not in self._module_path:
                self._module_path[sub] = full
        for name, t in list(m.named_parameters(remove_duplicate=False)) + list(m.named_buffers(remove_duplicate=False)):
            full = ".".join(x for x in (base, _plain(name)) if x)
            if id(t) not in self._param_name:
                self._param_name[id(t)] = (weakref.ref(t), full)
        return self._module_path.get(m, base)

    def _name_of(self, t: torch.Tensor) -> str | None:
        hit = self._param_name.get(id(t))
        if hit is not None and hit[0]() is t:
            return hit[1]
        return None

    def _observe(self, t: Any, name: str, category: str) -> None:
        if not isinstance(t, torch.Tensor):
            return
        try:
            if t.device.type != self.device_type or t.is_meta:
                return
            st = t.untyped_storage()
            addr, n = int(st.data_ptr()), int(st.nbytes())
        except (RuntimeError, NotImplementedError, TypeError):
            return
        if addr and n:
            self.obs.append([_now(), addr, n, name, category])

    def _observe_module(self, m: torch.nn.Module) -> None:
        base = self._module_path.get(m, "")
        for name, p in m.named_parameters():
            full = ".".join(x for x in (base, _plain(name)) if x)
            self._observe(p, full, "parameter")
            if p.grad is not None:
                self._observe(p.grad, full + ".grad", "gradient")
        for name, b in m.named_buffers():
            self._observe(b, ".".join(x for x in (base, _plain(name)) if x), "parameter")

    def _optimizer_param_name(self, o: Any, p: torch.Tensor, g: int, i: int) -> str:
        name = self._name_of(p)
        if name is not None:
            return name
        k = next((j for j, r in enumerate(self._optims) if r() is o), 0)
        return f"optimizer{k}.param_groups[{g}][{i}]"

    def _observe_optimizer(self, o: Any, grads: bool = False, state: bool = True) -> None:
        for g, group in enumerate(getattr(o, "param_groups", [])):
            for i, p in enumerate(group.get("params", [])):
                if not isinstance(p, torch.Tensor):
                    continue
                name = self._optimizer_param_name(o, p, g, i)
                if grads and p.grad is not None:
                    self._observe(p.grad, name + ".grad", "gradient")
                st = o.state.get(p) if state else None
                if isinstance(st, dict):
                    for k, v in st.items():
                        if isinstance(v, torch.Tensor) and v.numel() >= 1:
                            self._observe(v, f"{name} ({k})", "optimizer_state")

    # -- hooks ---------------------------------------------------------------------------
    def _pre(self, m: torch.nn.Module, args: Any) -> None:
        if torch.compiler.is_compiling() or not self.active or threading.get_ident() != self.thread:
            return
        try:
            root = not self._stack
            code = self._code(self._path(m))
            if root:
                self._claimed.clear()
                self._observe_module(m)
                tensors = [a for a in torch.utils._pytree.tree_leaves(args) if isinstance(a, torch.Tensor)
                           and a.grad_fn is None and not a.requires_grad]  # data, not another module's output
                for i, a in enumerate(tensors):
                    self._observe(a, f"{self.paths[code] + '.' if self.paths[code] else ''}input[{i}]", "input")
            site = self._site()
            self._stack.append((code, _seq(), site, []))
            self.fwd.append([_now(), code, 1, site])
        except Exception:  # noqa: BLE001 - naming must never break the user's run
            pass

    def _post(self, m: torch.nn.Module, args: Any, out: Any) -> None:
        if torch.compiler.is_compiling() or not self.active or threading.get_ident() != self.thread or not self._stack:
            return
        try:
            code, s0, site, frontier = self._stack.pop()
            self.fwd.append([_now(), code, -1, site])
            if torch.is_grad_enabled():
                self._claim(out, code, s0, _seq() or 1 << 62, site, frontier)
        except Exception:  # noqa: BLE001
            pass

    def _claim(self, out: Any, code: int, s0: int, s1: int, site: int, frontier: list[Any]) -> None:
        """Hook the autograd nodes this call made (sequence nr in [s0, s1)) that no inner call claimed.

        Walks back from the outputs' nodes and from the nodes inner calls handed up (``frontier``);
        stops at nodes an inner call claimed (it walked past them already) and hands nodes older
        than this call to the caller's frontier, so each node is walked about once per step.
        """
        todo: list[torch.autograd.graph.Node | None] = [t.grad_fn for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and t.grad_fn is not None]
        todo += frontier
        up = self._stack[-1][3] if self._stack else None
        seen: set[int] = set()
        while todo:
            node = todo.pop()
            if node is None:
                continue
            nr = int(node._sequence_nr())
            if nr >= s1 or nr in seen:
                continue  # AccumulateGrad (no sequence number), a later call's node, or walked already
            seen.add(nr)
            if nr < s0:
                if up is not None:
                    up.append(node)  # made before this call: the caller's, or older
                continue
            if nr in self._claimed:
                continue
            self._claimed.add(nr)
            node.register_prehook(self._bwd_start(code, site))
            node.register_hook(self._bwd_end)
            todo.extend(n for n, _ in node.next_functions)

    def _bwd_start(self, code: int, site: int) -> Any:
        def hook(grad_outputs: Any) -> None:
            if self.active:
                self.bwd.append([_now(), code, site])

        return hook

    def _bwd_end(self, grad_inputs: Any, grad_outputs: Any) -> None:
        if self.active:
            self.bwd.append([_now(), -1, -1])

    def _opt_pre(self, o: Any, args: Any, kwargs: Any) -> None:
        if torch.compiler.is_compiling() or not self.active:
            return
        try:
            if not any(r() is o for r in self._optims):
                self._optims.append(weakref.ref(o))
            self._observe_optimizer(o, grads=True, state=True)
            self.opt.append([_now(), 1])
        except Exception:  # noqa: BLE001
            pass

    def _opt_post(self, o: Any, args: Any, kwargs: Any) -> None:
        if torch.compiler.is_compiling() or not self.active:
            return
        try:
            self.opt.append([_now(), -1])
            self._observe_optimizer(o, grads=True, state=True)
        except Exception:  # noqa: BLE001
            pass
