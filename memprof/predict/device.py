"""What a card leaves to the caching allocator: the figures a prediction is checked against (no torch).

The dashboard's what-if panel and ``memprof predict`` both answer "does it fit on this card";
the card's total is the one :mod:`memprof.allocator.model` sizes reservations with.
"""

from __future__ import annotations

from memprof.allocator.model import DEFAULT_TOTAL_MEMORY

#: What the CUDA context and driver keep on an H100 80GB with torch 2.11: total memory minus what
#: the allocator could reserve at the OOM in snapshots/h100/attention-naive-s28672-d64-b8-oom
#: (84,232,306,688 B: reserved + free there).
CONTEXT_OVERHEAD_BYTES = DEFAULT_TOTAL_MEMORY - 84_232_306_688


def usable_memory(total_memory: int) -> int:
    """Bytes the allocator can reserve on a card of ``total_memory`` (the H100's measured overhead)."""
    return int(total_memory) - CONTEXT_OVERHEAD_BYTES
