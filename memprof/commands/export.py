"""``memprof export SNAPSHOT [-o OUT]``: the plain pickle that https://pytorch.org/memory_viz opens.

PyTorch's viewer reads an uncompressed pickle of the ``torch.cuda.memory._snapshot()`` dict (it
cannot read ``.pickle.gz``, xz or JSON). This writes exactly that: the snapshot's own dict, read
with memprof's restricted loader (plain data only, so nothing executable can pass through) and
written back as a protocol-4 pickle, as ``torch.cuda.memory._dump_snapshot`` does. A bare list of
segments (the oldest format) is wrapped as ``{"segments": [...], "device_traces": []}``.
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

from memprof.errors import MemprofError
from memprof.snapshot.meta import stem


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("export", help="write the plain .pickle that pytorch.org/memory_viz opens")
    p.add_argument("snapshot", help="snapshot file (.pickle, .pickle.gz, .json, ...)")
    p.add_argument("-o", "--output", default=None, help="file to write (default: NAME.memory_viz.pickle beside the input)")
    return p


def export_snapshot(src: str | Path, out: str | Path) -> int:
    """Write ``src`` as a plain protocol-4 pickle at ``out``; returns the bytes written."""
    from memprof.snapshot.read import normalise, read_raw

    raw, _ = read_raw(src)
    snap = normalise(raw, str(src))
    if snap.pop("_legacy_segment_list", False):
        snap = {"segments": snap["segments"], "device_traces": []}
    data = pickle.dumps(snap, protocol=4)
    out = Path(out)
    if out.resolve() == Path(src).resolve():
        raise MemprofError(f"{out}: would overwrite the input; choose another -o")
    try:
        out.write_bytes(data)
    except OSError as e:
        raise MemprofError(f"{out}: cannot write ({e.strerror or e})") from None
    return len(data)


def run(args: argparse.Namespace) -> int:
    out = Path(args.output) if args.output else Path(f"{stem(args.snapshot)}.memory_viz.pickle")
    n = export_snapshot(args.snapshot, out)
    print(f"memprof: wrote {out} ({n / 2**20:.1f} MiB, plain pickle): open it at https://pytorch.org/memory_viz")
    return 0
