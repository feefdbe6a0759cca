"""The corpus of snapshots others published (``../shared/corpus`` or ``$MEMPROF_CORPUS``) and the
plain-Python reference readings tests compare memprof with."""

from __future__ import annotations

import gzip
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from memprof.cli import main
from memprof.snapshot.load import load
from memprof.replay.timeline import replay
from memprof.snapshot.safe_pickle import safe_load

CORPUS = Path(os.environ.get("MEMPROF_CORPUS") or Path(__file__).resolve().parents[3] / "shared" / "corpus")
FILES = sorted(CORPUS.glob("*.pickle.gz")) if CORPUS.is_dir() else []


def readme_entries() -> dict[str, list[int]]:
    """file name -> entries per device, from the corpus README's table (written by whoever collected it)."""
    out = {}
    for line in (CORPUS / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 8 and cells[1].endswith(".pickle.gz"):
            out[cells[1]] = json.loads(cells[7])
    return out


def raw_of(path: Path) -> Any:
    with gzip.open(path, "rb") as f:
        return safe_load(f)


def segments_of(raw: Any) -> list[dict[str, Any]]:
    return raw if isinstance(raw, list) else raw.get("segments") or []


def traces_of(raw: Any) -> list[list[dict[str, Any]]]:
    return [] if isinstance(raw, list) else raw.get("device_traces") or []


def live_blocks(raw: Any, device: int) -> list[tuple[int, int, str, int]]:
    """(address, requested bytes, state, block bytes) of the allocated and awaiting-free blocks of one device."""
    out = []
    for seg in segments_of(raw):
        if seg.get("device", 0) != device:
            continue
        addr = seg["address"]
        for b in seg["blocks"]:
            a = b.get("address", addr)
            req = b.get("requested_size")
            if req is None and b.get("history"):  # torch 2.0: the request is in the block's history
                req = b["history"][0].get("real_size")
            if b["state"] in ("active_allocated", "active_pending_free"):
                out.append((a, b["size"] if req is None else req, b["state"], b["size"]))
            addr = a + b["size"]
    return out


def rounded(n: int) -> int:
    """The caching allocator's block for a request: rounded up to 512 bytes, at least 512."""
    return max(512, (n + 511) // 512 * 512)


def plain_replay(raw: Any, device: int) -> tuple[int, int]:
    """(held peak, torch-counted peak) of one device, one event at a time, in plain Python.

    Held (requested bytes): a block is held from its alloc until ``free_completed`` (or ``free``),
    so a free that waits for another stream still holds memory. Torch-counted (block bytes, as
    ``torch.cuda.max_memory_allocated``): torch's counter drops at ``free_requested``, and counts
    each request rounded up to 512 B (the block it got; for one still alive at dump time, its
    block in the snapshot). Memory freed in the trace but never allocated in it, and allocated or
    awaiting-free blocks of the segments the trace never allocated, were alive before the first
    event. The peak includes that starting level.
    """
    trace = traces_of(raw)[device] if device < len(traces_of(raw)) else []
    blocks = {a: (req, st, size) for a, req, st, size in live_blocks(raw, device)}
    # pass 1: which allocs are still held at the end (their block is in the snapshot)
    held_at: dict[int, int] = {}
    for i, e in enumerate(trace):
        if e["action"] == "alloc":
            held_at[e["addr"]] = i
        elif e["action"] in ("free_completed", "free"):
            held_at.pop(e["addr"], None)
    alive_end = {i for a, i in held_at.items() if a in blocks}

    held: dict[int, int] = {}
    counted: dict[int, int] = {}
    requested: set[int] = set()
    held_run = torch_run = 0
    held_max = torch_max = 0
    held_before = torch_before = 0
    for i, e in enumerate(trace):
        act, addr, size = e["action"], e.get("addr"), e.get("size", 0)
        if act == "alloc":
            # (allocated twice without a free: the first stays counted in the running totals to the end)
            held[addr] = size
            counted[addr] = blocks[addr][2] if i in alive_end else rounded(size)
            held_run += size
            torch_run += counted[addr]
        elif act == "free_requested":
            requested.add(addr)
            if addr in counted:
                torch_run -= counted.pop(addr)
            else:  # allocated before the window; still awaiting free at dump time: its snapshot block
                pending = addr in blocks and blocks[addr][1] == "active_pending_free" and addr not in held
                b = blocks[addr][2] if pending else rounded(size)
                torch_before += b
                torch_run -= b
        elif act in ("free_completed", "free"):
            if addr in held:
                held_run -= held.pop(addr)
            else:
                held_before += size
                held_run -= size
            if act == "free" or addr not in requested:
                if addr in counted:
                    torch_run -= counted.pop(addr)
                else:
                    torch_before += rounded(size)
                    torch_run -= rounded(size)
            requested.discard(addr)
        held_max = max(held_max, held_run)
        torch_max = max(torch_max, torch_run)
    for addr, (req, state, size) in blocks.items():
        if addr in held:
            continue
        held_before += req
        if state == "active_allocated":
            torch_before += size
    return held_before + held_max, torch_before + torch_max

