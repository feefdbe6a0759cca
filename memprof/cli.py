"""``memprof`` command line: one module per subcommand in :mod:`memprof.commands`.

Every error a user can cause is a :class:`~memprof.errors.MemprofError`, caught here
once and printed as one line; the exit code is non-zero.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

from memprof.version import __version__
from memprof.errors import MemprofError
from memprof.escape import EscapingWriter, printable

#: Exit status when stdout was closed under us (a reader such as `head` stopped early): what a Unix
#: tool killed by SIGPIPE exits with (128 + 13), never 0: the output, and so the answer, was cut.
EXIT_BROKEN_PIPE = 141

#: Subcommand modules under memprof.commands, in help order. Each has
#: ``register(subparsers) -> argparse.ArgumentParser`` and ``run(args) -> int``;
#: heavy imports (torch, plotly, dash) happen inside ``run`` only.
COMMANDS = ("record", "sweep", "stats", "explain", "diff", "check", "whatif", "predict", "serve", "report", "export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memprof",
        description="Where every byte of GPU memory goes in PyTorch, and why.",
    )
    parser.add_argument("--version", action="version", version=f"memprof {__version__}")
    parser.add_argument(
        "--max-bytes",
        metavar="SIZE",
        help="largest snapshot to read, decompressed, and memory to build it (default: 2G, or 8x the file's size on disk "
        "when more, 256x for a compressed file; also MEMPROF_MAX_BYTES); "
        "accepted anywhere before `--`",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"memprof.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"memprof.commands.{name}":
                continue  # not built yet in this checkout
            raise
        p = mod.register(sub)
        p.set_defaults(_run=mod.run, _parser=p)
    return parser


def _take_max_bytes(argv: list[str]) -> list[str]:
    """Move ``--max-bytes SIZE`` from wherever it is (before ``--``) to the front."""
    end = argv.index("--") if "--" in argv else len(argv)
    for i in range(end):
        a = argv[i]
        if a == "--max-bytes" and i + 1 < end:
            return ["--max-bytes", argv[i + 1]] + argv[:i] + argv[i + 2 :]
        if a.startswith("--max-bytes="):
            return [a] + argv[:i] + argv[i + 1 :]
    return argv


#: commands that only read snapshots: glibc may keep freed memory for reuse (memprof.malloc_tuning)
ANALYSIS_COMMANDS = frozenset({"stats", "explain", "diff", "report", "serve", "whatif", "export", "check", "run_report"})


def main(argv: Sequence[str] | None = None) -> int:
    argv = _take_max_bytes(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    if extra and not getattr(args, "_accepts_extra", False):
        args._parser.error(f"unrecognized arguments: {' '.join(extra)}")  # the subcommand's usage, not the top level's
    args._extra = extra
    args._argv = argv
    if args._run.__module__.rsplit(".", 1)[-1] in ANALYSIS_COMMANDS:
        from memprof.snapshot.malloc_tuning import keep_freed_memory

        keep_freed_memory()
    stdout = sys.stdout
    try:
        if args.max_bytes:
            from memprof.snapshot.limits import parse_size

            os.environ["MEMPROF_MAX_BYTES"] = str(parse_size(args.max_bytes))
        sys.stdout = EscapingWriter(stdout)  # text from files reaches the terminal
        return int(args._run(args) or 0)
    except MemprofError as e:
        print(f"memprof: {printable(e)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("memprof: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `memprof check ... | head`: the output was cut, so was the answer
        try:  # no second BrokenPipeError when the interpreter flushes stdout at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return EXIT_BROKEN_PIPE
    finally:
        sys.stdout = stdout


if __name__ == "__main__":
    sys.exit(main())
