"""One module per ``memprof`` subcommand: ``register(subparsers)`` and ``run(args) -> int``."""

from __future__ import annotations

import argparse


def add_report_options(p: argparse.ArgumentParser, top: int, top_help: str) -> None:
    """--device, --json, --top and --no-cache: the options every snapshot-reading report shares."""
    p.add_argument("--device", type=int, default=None, help="device index (default: the device with most entries)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--top", type=int, default=top, help=top_help)
    p.add_argument("--no-cache", action="store_true", help="do not read or write the columnar cache")
