"""``memprof serve [DIR]``: the dashboard over a folder of snapshots (default: the repo's ``snapshots/``)."""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
from pathlib import Path

from memprof.errors import MemprofError
from memprof.snapshot.load import load
from memprof.snapshot.meta import snapshot_beside


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
    p.add_argument("--cache-mb", type=float, default=None, metavar="MIB",
                   help="memory for cached timelines and views (default $MEMPROF_SERVE_CACHE_MB or 1024)")
    return p


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    h = host.strip().strip("[]")
    if h.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, port: int, root: Path) -> str | None:
    """The warning printed when the dashboard binds beyond loopback (None on loopback)."""
    if is_loopback(host):
        return None
    return (f"memprof: warning: --host {host} is reachable from other machines: anyone who can reach port {port} "
            f"can read every snapshot and its metadata under {root} (there is no login). "
            "To view it remotely, keep the default 127.0.0.1 and forward the port (ssh -L).")


def run(args: argparse.Namespace) -> int:
    root = Path(args.dir) if args.dir else default_dir()
    if root.is_file():
        root = snapshot_beside(root)
        load(root)  # an unreadable file fails here, with its one-line reason, not in the browser
    elif not root.is_dir():
        raise MemprofError(f"{root}: no such file or folder")
    if not 0 < args.port < 65536:
        raise MemprofError(f"--port {args.port}: not a port number")
    if args.cache_mb is not None and not 0 < args.cache_mb < 2**40:
        raise MemprofError(f"--cache-mb {args.cache_mb}: must be a positive number of MiB")
    check_port_free(args.host, args.port)
    warning = exposure_warning(args.host, args.port, root.resolve())
    if warning:
        print(warning, file=sys.stderr, flush=True)
    from memprof.dashboard import create_app

    app = create_app(root, None if args.cache_mb is None else int(args.cache_mb * 2**20))
    print(f"memprof: serving {root.resolve()} on http://{args.host}:{args.port}/", flush=True)
    app.run(host=args.host, port=args.port, debug=args.debug)
    return 0
