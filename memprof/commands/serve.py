"""``memprof serve [DIR]``: the dashboard over a folder of snapshots (default: the repo's ``snapshots/``)."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

from memprof.errors import MemprofError
from memprof.load import load
from memprof.meta import snapshot_beside


def default_dir() -> Path:
    """The bundled ``snapshots/`` folder beside the package."""
    return Path(__file__).resolve().parents[2] / "snapshots"


def check_port_free(host: str, port: int) -> None:
    """Fail before printing "serving" when ``host:port`` cannot be bound (busy, or no such address)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise MemprofError(f"--host {host}: {e.strerror or e}") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: TIME_WAIT is not "busy"
        try:
            s.bind(addr)
        except OSError as e:
            raise MemprofError(f"cannot listen on {host}:{port}: {e.strerror or e} (is another server running? pick one with --port)") from None


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("serve", help="open the dashboard on a folder of snapshots, or on one snapshot file")
    p.add_argument("dir", nargs="?", default=None, metavar="DIR|FILE",
                   help="folder of snapshots (default: the repo's snapshots/), or one snapshot file (or its .meta.json)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8050)
    p.add_argument("--debug", action="store_true", help="Dash debug mode (reloader, error overlay)")
    return p


def run(args: argparse.Namespace) -> int:
    root = Path(args.dir) if args.dir else default_dir()
    if root.is_file():
        root = snapshot_beside(root)
        load(root)  # an unreadable file fails here, with its one-line reason, not in the browser
    elif not root.is_dir():
        raise MemprofError(f"{root}: no such file or folder")
    if not 0 < args.port < 65536:
        raise MemprofError(f"--port {args.port}: not a port number")
    check_port_free(args.host, args.port)
    from app import create_app

    app = create_app(root)
    print(f"memprof: serving {root.resolve()} on http://{args.host}:{args.port}/", flush=True)
    app.run(host=args.host, port=args.port, debug=args.debug)
    return 0
