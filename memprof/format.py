"""Small text formatting helpers shared by the CLI reports."""

from __future__ import annotations

import math


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
