"""Units: the one grammar for sizes memprof reads, and the one byte and time formatter it writes.

Sizes typed on the command line (``check --max-allocated/--max-reserved``, ``whatif``/``predict
--device-memory``, ``--max-bytes``), in the dashboard's table filters and in
``@pytest.mark.limit_gpu_memory`` go through :func:`parse_size` (the dashboard's what-if input is
still a number of GB: not yet moved here):

* ``KiB MiB GiB TiB`` and the bare letters ``K M G T`` are powers of 1024 (``80G`` = 80 GiB);
* ``kB MB GB TB`` are powers of 1000, as SI and disk vendors use them (``80GB`` = 80 * 10**9 B:
  an H100 80GB's totalGlobalMem is 85,017,493,504 B, ``simulator.DEFAULT_TOTAL_MEMORY``);
* ``B`` or no unit: bytes; case-insensitive, blanks and ``_`` between digits allowed.

Figures are written in binary units only (:func:`fmt_bytes`: ``1536 -> '1.5 KiB'``).
"""

from __future__ import annotations

import math
import re

from memprof.errors import MemprofError

#: unit word (lower case) -> bytes
UNITS: dict[str, int] = {
    "": 1, "b": 1,
    "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40,
    "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int | float) -> int:
    """Bytes from ``"2 GiB"``, ``"80G"``, ``"1.5GB"``, ``"512MiB"``, ``"1_000"`` or a number (see the module)."""
    if isinstance(text, bool):
        raise MemprofError(f"not a size: {text!r}")
    if isinstance(text, (int, float)):
        if text < 0 or text != text or text == float("inf"):
            raise MemprofError(f"not a size: {text!r}")
        return int(text)
    m = _SIZE_RE.match(str(text).replace("_", ""))
    unit = m.group(2).lower() if m else None
    if not m or unit not in UNITS:
        raise MemprofError(f"not a size: {text!r} (use e.g. 80GiB, 512MiB, 1.5GB or a number of bytes)")
    return int(float(m.group(1)) * UNITS[unit])


def fmt_bytes(n: float | int | None) -> str:
    """Human-readable binary size: 1536 -> '1.5 KiB'."""
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "-"
    sign = "-" if n < 0 else ""
    v = float(abs(n))
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if v < 1024 or unit == "TiB":
            return f"{sign}{v:.0f} {unit}" if unit == "B" else f"{sign}{v:.1f} {unit}"
        v /= 1024
    return f"{sign}{v:.1f} TiB"


def fmt_us(us: float | None) -> str:
    """Duration in microseconds as a short string: 1500 -> '1.50 ms'."""
    if us is None or (isinstance(us, float) and math.isnan(us)):
        return "-"
    if abs(us) < 1000:
        return f"{us:.0f} us"
    if abs(us) < 1_000_000:
        return f"{us / 1000:.2f} ms"
    return f"{us / 1e6:.2f} s"
