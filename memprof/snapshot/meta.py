"""The metadata file memprof writes beside each snapshot: ``NAME.pickle`` -> ``NAME.meta.json``.

Plain JSON, one object. Keys written by the recorder (all optional when reading; a snapshot
from anyone else has no metadata at all):

    memprof_version, created (ISO time), command (argv that reproduces it),
    workload: {kind: 'attention'|'transformer'|'script'|'callable', ...every option},
    device: {type: 'cuda'|'cpu'|'mps', name, total_memory_bytes, index},
    torch_version, python_version,
    status: 'ok'|'oom'|'error', error (str, when not ok),
    record: {max_entries, stacks, context, warmup_steps, measured_steps},
    timings_ms: {phase: {mean, std, n, samples: [...]}}   # GPU time per phase (CUDA events)
    cpu_timings_ms: {phase: {mean, std, n, samples}}      # host wall time per phase
    gpu_busy_ms: {phase: ms}        # sum of kernel/memcpy/memset durations launched in the phase,
                                    # from record.profiled_steps profiled steps (memprof.recorder.busy)
    kernel_launches: {phase: n}     # device ops (kernels, memcpys, memsets) launched in the phase
    profiled_host_ms: {phase: ms}   # host span of the phase in the profiled step ('step' runs until
                                    # the GPU is drained); gpu_utilization = busy / span of 'step'
    gpu_busy_profile: {steps, warmup_steps, activities, device_ops, attribution, profiler_wall_ms}
    gpu_busy_error (str)            # when the profiler failed (e.g. CUPTI missing): no busy keys
    peak_allocated_bytes, peak_reserved_bytes               # the allocator's own counters
    parameter_addrs: [[addr, size], ...]                   # parameters' storages (for categories)
    optimizer_state_addrs, gradient_addrs, input_addrs     # likewise, when known
    phases: [{name, iteration, start_us, end_us}]          # host-clock ranges, same clock as time_us
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from memprof.errors import MemprofError

SNAPSHOT_SUFFIXES = (".pickle.gz", ".pickle", ".pkl.gz", ".pkl", ".json.gz", ".json")


def stem(path: str | os.PathLike[str]) -> Path:
    """The snapshot path without its snapshot suffix: ``a/b.pickle.gz`` -> ``a/b``."""
    p = Path(path)
    name = p.name
    if name.endswith(".meta.json"):
        return p.with_name(name[: -len(".meta.json")])
    for suf in SNAPSHOT_SUFFIXES:
        if name.endswith(suf) and not name.endswith(".meta.json"):
            return p.with_name(name[: -len(suf)])
    return p.with_name(p.stem)


def snapshot_beside(path: str | os.PathLike[str]) -> Path:
    """``path`` itself, or for a ``NAME.meta.json`` the snapshot ``NAME.pickle[.gz]`` (or ``.json``) beside it."""
    p = Path(path)
    if not p.name.endswith(".meta.json"):
        return p
    base = stem(p)
    for suf in SNAPSHOT_SUFFIXES:
        cand = base.with_name(base.name + suf)
        if cand.is_file():
            return cand
    raise MemprofError(f"{p} is memprof's metadata file, and no snapshot {base.name}.pickle[.gz] is beside it")


def meta_path(snapshot_path: str | os.PathLike[str]) -> Path:
    return stem(snapshot_path).with_name(stem(snapshot_path).name + ".meta.json")


def read_meta(snapshot_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata beside a snapshot, or ``{}`` when there is none."""
    mp = meta_path(snapshot_path)
    if not mp.exists():
        return {}
    try:
        data = json.loads(mp.read_text())
    except (OSError, ValueError) as e:
        raise MemprofError(f"{mp}: unreadable metadata ({e})") from None
    if not isinstance(data, dict):
        raise MemprofError(f"{mp}: metadata is not a JSON object")
    return data


def write_meta(snapshot_path: str | os.PathLike[str], meta: dict[str, Any]) -> Path:
    mp = meta_path(snapshot_path)
    fd, tmp = tempfile.mkstemp(dir=mp.parent, prefix=f".{mp.name}.", suffix=".tmp")  # never shared between writers
    os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide the file from other users
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(meta, indent=2, sort_keys=True, default=str))
    os.replace(tmp, mp)
    return mp


# Phase labels: the recorder marks phases with torch.profiler.record_function(label) (they land in
# the snapshot's ``external_annotations``) and, where torch has it, with
# torch.cuda.memory._set_memory_metadata(label) (every trace entry then carries ``user_metadata``).
PHASE_PREFIX = "memprof/"


def phase_label(phase: str, iteration: int | None = None) -> str:
    """``phase_label('forward', 2) -> 'memprof/forward/2'``; without an iteration: ``'memprof/forward'``."""
    return f"{PHASE_PREFIX}{phase}" + ("" if iteration is None else f"/{iteration}")


def parse_phase_label(label: str) -> tuple[str, int | None] | None:
    """Inverse of :func:`phase_label`; ``None`` for labels memprof did not write."""
    if not label.startswith(PHASE_PREFIX):
        return None
    rest = label[len(PHASE_PREFIX):]
    name, _, it = rest.partition("/")
    if not name:
        return None
    try:
        return name, (int(it) if it else None)
    except ValueError:
        return name, None
