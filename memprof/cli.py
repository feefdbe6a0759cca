"""``memprof`` command line: one module per subcommand in :mod:`memprof.commands`.

Every error a user can cause is a :class:`~memprof.errors.MemprofError`, caught here
once and printed as one line; the exit code is non-zero.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from memprof import __version__
from memprof.errors import MemprofError

#: Subcommand modules under memprof.commands, in help order. Each has
#: ``register(subparsers) -> argparse.ArgumentParser`` and ``run(args) -> int``;
#: heavy imports (torch, plotly, dash) happen inside ``run`` only.
COMMANDS = ("record", "sweep", "stats", "explain", "diff", "check", "serve", "report")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memprof",
        description="Where every byte of GPU memory goes in PyTorch, and why.",
    )
    parser.add_argument("--version", action="version", version=f"memprof {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"memprof.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"memprof.commands.{name}":
                continue  # not built yet in this checkout
            raise
        p = mod.register(sub)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    if extra and not getattr(args, "_accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args._extra = extra
    try:
        return int(args._run(args) or 0)
    except MemprofError as e:
        print(f"memprof: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("memprof: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
