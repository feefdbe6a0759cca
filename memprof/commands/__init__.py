"""One module per ``memprof`` subcommand: ``register(subparsers)`` and ``run(args) -> int``."""

from __future__ import annotations

import argparse


def count(s: str) -> int:
    """An argparse type: an integer >= 0 (``--top -1`` is refused with the subcommand's usage)."""
    try:
        n = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid count {s!r}: give a whole number >= 0") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"invalid count {s!r}: must be >= 0")
    return n


def add_report_options(p: argparse.ArgumentParser, top: int, top_help: str) -> None:
    """--device, --json, --top and --no-cache: the options every snapshot-reading report shares."""
    p.add_argument("--device", type=int, default=None, help="device index (default: the device with most entries)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--top", type=count, default=top, help=top_help)
    p.add_argument("--no-cache", action="store_true", help="do not read or write the columnar cache")
