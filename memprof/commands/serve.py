"""``memprof serve [DIR]``: the dashboard over a folder of snapshots (default: the repo's ``snapshots/``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from memprof.errors import MemprofError


def default_dir() -> Path:
    """The bundled ``snapshots/`` folder beside the package."""
    return Path(__file__).resolve().parents[2] / "snapshots"


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("serve", help="open the dashboard on a folder of snapshots")
    p.add_argument("dir", nargs="?", default=None, help="folder of snapshots (default: the repo's snapshots/)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8050)
    p.add_argument("--debug", action="store_true", help="Dash debug mode (reloader, error overlay)")
    return p


def run(args: argparse.Namespace) -> int:
    root = Path(args.dir) if args.dir else default_dir()
    if not root.is_dir():
        raise MemprofError(f"{root}: no such folder")
    if not 0 < args.port < 65536:
        raise MemprofError(f"--port {args.port}: not a port number")
    from app import create_app

    app = create_app(root)
    print(f"memprof: serving {root.resolve()} on http://{args.host}:{args.port}/", flush=True)
    app.run(host=args.host, port=args.port, debug=args.debug)
    return 0
