"""Built-in workloads memprof records: naive/compiled/SDPA attention and a Transformer LM.

A workload owns its tensors and runs one step as named phases. The recorder wraps each
phase (timing, record_function label, memory metadata); the workload only says where a
phase begins and ends, through the ``phase`` callback it is given.

Only this package and :mod:`memprof.recorder` import torch.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, Iterable

import torch

from memprof.errors import MemprofError

PhaseFn = Callable[[str], ContextManager[Any]]


def default_device() -> str:
    """cuda if available, else mps, else cpu."""
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def resolve_device(name: str | None) -> torch.device:
    if not name or name == "auto":
        return torch.device(default_device())
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise MemprofError(f"unknown device {name!r} (use cuda, cuda:N, mps or cpu)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MemprofError(f"device {name!r} asked for but CUDA is not available in this torch")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_ctx(device: torch.device, dtype: str) -> ContextManager[Any]:
    """``torch.autocast`` for bf16/fp16; a no-op for fp32."""
    if dtype == "fp32":
        return contextlib.nullcontext()
    if dtype not in DTYPES:
        raise MemprofError(f"unknown dtype {dtype!r} (use fp32 or bf16)")
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype])


def nullphase(name: str) -> ContextManager[Any]:
    return contextlib.nullcontext()


class Workload:
    """One step of work, split into phases.

    Subclasses set ``kind``, ``options`` and ``phases`` (the phase names one step runs,
    in order) and implement :meth:`setup` and :meth:`step`.
    """

    kind: str = "workload"
    phases: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.options: dict[str, Any] = {}
        self.device: torch.device = torch.device("cpu")

    def setup(self, device: torch.device) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def step(self, phase: PhaseFn = nullphase) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def tensors(self) -> dict[str, list[torch.Tensor]]:
        """Tensors by category: parameters, gradients, optimizer_state, inputs."""
        return {}

    def slug(self) -> str:
        """A readable file-name stem for this configuration."""
        return self.kind

    def teardown(self) -> None:
        """Drop every tensor so the memory can be freed (sweeps run many in one process)."""
        for k in list(vars(self)):
            if k not in ("options", "device", "kind", "phases"):
                setattr(self, k, None)


def storage_addrs(tensors: Iterable[torch.Tensor | None]) -> list[list[int]]:
    """[[data_ptr, nbytes], ...] of the distinct storages behind ``tensors``."""
    seen: dict[int, int] = {}
    for t in tensors:
        if t is None or not isinstance(t, torch.Tensor):
            continue
        if hasattr(t, "to_local"):  # a DTensor (FSDP2): this rank's shard is what it holds
            t = t.to_local()
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            continue
        ptr = int(st.data_ptr())
        if ptr:
            seen[ptr] = max(seen.get(ptr, 0), int(st.nbytes()))
    return [[p, n] for p, n in seen.items()]


def build(kind: str, **options: Any) -> Workload:
    """A workload by kind: ``attention`` or ``transformer``."""
    if kind == "attention":
        from memprof.workloads.attention import AttentionWorkload

        return AttentionWorkload(**options)
    if kind == "transformer":
        from memprof.workloads.transformer import TransformerWorkload

        return TransformerWorkload(**options)
    raise MemprofError(f"unknown workload {kind!r} (use attention or transformer)")
