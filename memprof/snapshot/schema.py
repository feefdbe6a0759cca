"""TypedDicts mirroring PyTorch's snapshot dict (``torch.cuda.memory._snapshot``).

These describe the *raw* input only. Everything after :mod:`memprof.snapshot.load` is columns.
Keys marked ``NotRequired`` are missing in some torch versions (2.1 to 2.14) or
some recording modes.
"""

from __future__ import annotations

from typing import Literal, TypedDict

try:  # Python 3.11+
    from typing import NotRequired
except ImportError:  # pragma: no cover - Python 3.10
    from typing_extensions import NotRequired


class Frame(TypedDict):
    filename: str
    line: int
    name: str


TraceAction = Literal[
    "alloc",
    "free",  # written by PyTorch's viewer after merging free_requested+free_completed
    "free_requested",
    "free_completed",
    "segment_alloc",
    "segment_free",
    "segment_map",
    "segment_unmap",
    "oom",
    "snapshot",
]


class TraceEntry(TypedDict):
    action: TraceAction
    addr: NotRequired[int]  # absent for oom in some versions
    size: int
    stream: NotRequired[int]
    time_us: NotRequired[int]  # torch >= 2.1
    frames: NotRequired[list[Frame]]  # absent when no context was recorded
    device_free: NotRequired[int]  # oom only
    compile_context: NotRequired[str]
    user_metadata: NotRequired[str]


class HistoryEntry(TypedDict):  # legacy (torch <= 2.0) per-block history
    addr: int
    real_size: int
    frames: NotRequired[list[Frame]]


class Block(TypedDict):
    size: int
    requested_size: NotRequired[int]
    address: NotRequired[int]  # newer versions; otherwise derived from the segment
    state: Literal["active_allocated", "active_pending_free", "active_awaiting_free", "inactive"]
    frames: NotRequired[list[Frame]]
    history: NotRequired[list[HistoryEntry]]


class Segment(TypedDict):
    device: NotRequired[int]
    address: int
    total_size: int
    stream: NotRequired[int]
    segment_type: NotRequired[Literal["small", "large"]]
    segment_pool_id: NotRequired[tuple[int, int]]
    allocated_size: NotRequired[int]
    active_size: NotRequired[int]
    requested_size: NotRequired[int]
    is_expandable: NotRequired[bool]
    frames: NotRequired[list[Frame]]
    blocks: list[Block]


class Annotation(TypedDict):
    device: int
    stage: Literal["START", "END"]
    name: str
    time_us: int


#: Top-level key of the names memprof's recorder stores inside the snapshot dict
#: (:mod:`memprof.recorder.naming` writes it, :mod:`memprof.analysis.attribution` reads it).
ATTRIBUTION_KEY = "memprof_attribution"


class Attribution(TypedDict):
    version: int
    device_type: str
    modules: list[str]  # module paths; codes below index this list
    roots: list[dict[str, str]]  # {path, class}
    sites: list[list[object]]  # [filename, line, function]
    forward: list[list[int]]  # [time_us, module code, +1 enter / -1 exit, site code]
    backward: list[list[int]]  # [time_us, module code or -1 (node end), site code]
    optimizer: list[list[int]]  # [time_us, +1 step start / -1 step end]
    tensors: list[list[object]]  # [time_us, storage addr, nbytes, name, category]
    compiled_sites: NotRequired[list[list[object]]]  # [generated file, line, user file, line, function]
    workspaces: NotRequired[list[int]]  # cuBLAS / cuBLASLt workspace sizes (CUDA)


class RawSnapshot(TypedDict):
    segments: list[Segment]
    device_traces: NotRequired[list[list[TraceEntry]]]
    allocator_settings: NotRequired[dict[str, object]]
    external_annotations: NotRequired[list[Annotation]]
    memprof_attribution: NotRequired[Attribution]
