"""One size grammar (memprof.units): every place that reads a size agrees on it."""

from __future__ import annotations

import pytest

from memprof.present import filters
from memprof.snapshot import limits
from memprof.errors import MemprofError
from memprof.units import UNITS, fmt_bytes, parse_size


@pytest.mark.parametrize("text,want", [
    ("80GiB", 80 << 30), ("80G", 80 << 30), ("80 g", 80 << 30), ("80GB", 80 * 10**9),
    ("512MiB", 512 << 20), ("512M", 512 << 20), ("512MB", 512 * 10**6), ("1.5KiB", 1536),
    ("1.5kB", 1500), ("2TiB", 2 << 40), ("2TB", 2 * 10**12), ("1000", 1000), ("1_000_000", 10**6),
    ("512 B", 512), (".5GiB", 1 << 29),
])
def test_parse_size(text: str, want: int) -> None:
    assert parse_size(text) == want


@pytest.mark.parametrize("bad", ["", "GiB", "-3", "1.2.3", "5 parsecs", "1e9", "nan", "inf", True, -1, float("nan")])
def test_not_a_size(bad: object) -> None:
    with pytest.raises(MemprofError, match="not a size"):
        parse_size(bad)  # type: ignore[arg-type]


def test_former_parsers_are_the_one_grammar() -> None:
    # --max-bytes, check's limits, whatif/predict --device-memory and the table filters
    for text in ("2G", "2GiB", "2GB", "300 MiB", "1.5kB"):
        want = parse_size(text)
        assert limits.parse_size(text) == want
        assert filters.byte_count(text) == want
    assert filters.UNITS is UNITS


def test_fmt_bytes_binary() -> None:
    assert fmt_bytes(1536) == "1.5 KiB" and fmt_bytes(512) == "512 B" and fmt_bytes(-(3 << 30)) == "-3.0 GiB"
    assert fmt_bytes(None) == "-"
