"""``memprof whatif SNAPSHOT``: replay the recorded requests through the allocator model under
another configuration (``--alloc-conf``) or device size (``--device-memory``)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from memprof.allocator.whatif import whatif_dict
from memprof.units import fmt_bytes, parse_size


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("whatif", help="replay a snapshot's requests under other allocator settings or device size")
    p.add_argument("snapshot", help="snapshot file (.pickle, .pickle.gz or .json)")
    p.add_argument("--alloc-conf", default=None,
                   help='PYTORCH_CUDA_ALLOC_CONF to simulate (torch defaults for what it leaves out; "" = defaults), '
                        'e.g. "expandable_segments:True,max_split_size_mb:128"; default: the recorded settings')
    p.add_argument("--device-memory", default=None, help="bytes the allocator may reserve (e.g. 80GB, 40GiB); default: unlimited")
    p.add_argument("--min-device-memory", action="store_true",
                   help="search for the least device memory these requests fit in under the simulated settings "
                        "(replays the stream ~10 times from an empty cache, to 2 MiB)")
    p.add_argument("--device", type=int, default=None, help="device index (default: the device with most entries)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the columnar cache")
    return p


def render(d: dict[str, Any]) -> str:
    r = d["recorded"]
    ra = r["max_memory_allocated"] if r["max_memory_allocated"] is not None else r["simulated_max_memory_allocated"]
    rr = r["max_memory_reserved"] if r["max_memory_reserved"] is not None else r["simulated_max_memory_reserved"]
    sa, sr = d["simulated_max_memory_allocated"], d["simulated_max_memory_reserved"]
    f = d["fragmentation_at_max_reserved"]
    lines = [
        f"{d['snapshot']}  (device {d['device']})",
        f"  {'':24} {'recorded':>14} {'simulated':>14} {'change':>12}",
        f"  {'allocator settings':24} {r['alloc_conf']:>14} {d['alloc_conf']:>14}",
        f"  {'max_memory_allocated':24} {fmt_bytes(ra):>14} {fmt_bytes(sa):>14} {fmt_bytes(sa - ra):>12}",
        f"  {'max_memory_reserved':24} {fmt_bytes(rr):>14} {fmt_bytes(sr):>14} {fmt_bytes(sr - rr):>12}",
        f"  at the reserved peak: {fmt_bytes(f['allocated'])} allocated, {fmt_bytes(f['free_cached'])} cached but free "
        f"({f['fraction_free']:.1%}), largest free block {fmt_bytes(f['largest_free_block'])}",
    ]
    if d["device_memory"]:
        lines.append(f"  device memory {fmt_bytes(d['device_memory'])}: "
                     + ("OUT OF MEMORY at request #{request_index} ({b})".format(
                         request_index=d["oom_request"]["request_index"], b=fmt_bytes(d["oom_request"]["requested_bytes"]))
                        if d["oom"] else "fits"))
    if d.get("min_device_memory") is not None:
        lines.append(f"  least device memory these requests fit in: {fmt_bytes(d['min_device_memory'])} "
                     f"({d['min_device_memory']:,} bytes; from an empty cache, {d['alloc_conf']} settings, to 2 MiB)")
    br = d["baseline"]["simulated_max_memory_reserved"]
    if d["start"] == "cold":
        lines.append(f"  (simulated from an empty allocator; the recorded settings from there reserve {fmt_bytes(br)})")
    if br and sr != br:
        lines.append(f"  this change {'saves' if sr < br else 'costs'} {fmt_bytes(abs(sr - br))} of reserved memory "
                     f"({(sr - br) / br:+.1%})")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from memprof.snapshot.load import load
    from memprof.snapshot.meta import read_meta

    snap = load(args.snapshot, use_cache=not args.no_cache)
    device = snap.default_device() if args.device is None else args.device
    snap.check_device(device)
    dm = parse_size(args.device_memory) if args.device_memory else None
    d = whatif_dict(snap, device, args.alloc_conf, dm, read_meta(args.snapshot))
    if args.min_device_memory:
        from memprof.allocator.model import AllocConf, min_device_memory, requests_from_snapshot

        req, rec_conf = requests_from_snapshot(snap, device)
        conf = AllocConf.parse(args.alloc_conf) if args.alloc_conf is not None else rec_conf
        d["min_device_memory"] = min_device_memory(req, conf) if len(req) else 0
    if args.json:
        json.dump(d, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(render(d))
    return 0
