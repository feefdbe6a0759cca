"""``memprof predict attention|transformer [OPTIONS]``: torch's memory counters for a built-in
workload's step, predicted on this machine without a GPU (FakeTensorMode + the allocator model).

    memprof predict transformer --size small --batch 8 --device-memory 80GB
    memprof predict attention --seq-len 16384 --find-max-seq-len
    memprof predict transformer --size medium --find-max-batch --alloc-conf expandable_segments:True
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from memprof.errors import MemprofError
from memprof.units import fmt_bytes

#: Bytes an H100 80GB's allocator can reserve with torch 2.11: reserved + cudaMemGetInfo's free at
#: the OOM in snapshots/h100/attention-naive-s28672-d64-b8-oom (79,247,179,776 + 4,985,126,912).
H100_80GB_USABLE = 84_232_306_688


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "predict",
        help="predict a built-in workload's peak allocated/reserved memory without a GPU",
        description="Run attention|transformer (the options of `memprof record attention|transformer`) on fake "
        "tensors and replay its allocations through the caching-allocator model.",
    )
    p.add_argument("target", nargs=argparse.REMAINDER, help="attention|transformer [workload options] [predict options]")
    p.set_defaults(_accepts_extra=True)
    return p


def _parser(kind: str) -> argparse.ArgumentParser:
    from memprof.commands.record import attention_parser, transformer_parser

    p = attention_parser() if kind == "attention" else transformer_parser()
    p.prog = f"memprof predict {kind}"
    p.add_argument("--alloc-conf", default=None, help='PYTORCH_CUDA_ALLOC_CONF to simulate, e.g. "expandable_segments:True"')
    p.add_argument("--device-memory", default=None,
                   help=f"bytes the allocator may reserve (e.g. 80GB, 40GiB); default for --find-max-*: an H100 80GB ({H100_80GB_USABLE:,})")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--find-max-batch", action="store_true", help="bisect for the largest batch that fits")
    p.add_argument("--find-max-seq-len", action="store_true", help="bisect for the largest seq_len (attention) / context (transformer) that fits")
    p.add_argument("--pre-steps", type=int, default=None,
                   help="steps before the measured window (default: what `memprof record` runs with --warmup, --steps "
                        "and --profile-steps: 2 + 3 + 2)")
    return p


WORKLOAD_KEYS = {
    "attention": ("impl", "seq_len", "d", "batch", "causal", "mode", "dtype"),
    "transformer": ("size", "mode", "compile", "dtype", "context", "batch", "vocab", "d_model", "num_layers",
                    "num_heads", "d_ff", "positions"),
}


def render(d: dict[str, Any]) -> str:
    o = d["options"]
    opts = " ".join(f"{k}={v}" for k, v in o.items() if k != "kind" and v is not None)
    lines = [f"predicted {o['kind']}  {opts}  (allocator: {d['alloc_conf']})",
             f"  max_memory_allocated  {fmt_bytes(d['predicted_max_memory_allocated']):>11}  ({d['predicted_max_memory_allocated']:,} B)",
             f"  max_memory_reserved   {fmt_bytes(d['predicted_max_memory_reserved']):>11}  ({d['predicted_max_memory_reserved']:,} B)"]
    if d["device_memory"]:
        lines.append(f"  device memory         {fmt_bytes(d['device_memory']):>11}  -> " + ("fits" if d["fits"] else
                     f"OUT OF MEMORY (a request of {fmt_bytes(d['oom_request']['requested_bytes'])} fails)"))
    total = max(d["predicted_max_memory_allocated"], 1)
    lines.append("  at the allocated peak:")
    for c, b in d["by_category"].items():
        lines.append(f"    {c:<18} {fmt_bytes(b):>11}  {b / total:6.1%}")
    if d.get("search"):
        s = d["search"]
        lines.append(f"  largest {s['parameter']} that fits: {s['max_fitting']}  (first failing: {s['first_failing']})")
    lines.append(f"  not counted: {d['not_counted']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from memprof.units import parse_size
    from memprof.predict.core import find_max, predict_workload

    target = list(args.target) + list(getattr(args, "_extra", []) or [])
    if not target or target[0] not in ("attention", "transformer"):
        raise MemprofError("predict what? use `memprof predict attention [OPTIONS]` or `memprof predict transformer [OPTIONS]`")
    kind = target[0]
    a = _parser(kind).parse_args(target[1:])
    opts = {k: getattr(a, k) for k in WORKLOAD_KEYS[kind] if getattr(a, k, None) is not None}
    dm = parse_size(a.device_memory) if a.device_memory else None
    # the steps `memprof record` runs before its window: warm-up, timed, profiled (+1 profiler warm-up)
    steps, warm, prof = getattr(a, "steps", 3), getattr(a, "warmup", 2), getattr(a, "profile_steps", 1)
    if steps < 1 or warm < 0 or prof < 0 or (a.pre_steps is not None and a.pre_steps < 0):
        raise MemprofError("--steps must be >= 1; --warmup, --profile-steps and --pre-steps >= 0")
    pre = warm + steps + (prof + 1 if prof else 0) if a.pre_steps is None else a.pre_steps
    search = None
    if a.find_max_batch or a.find_max_seq_len:
        if a.find_max_batch and a.find_max_seq_len:
            raise MemprofError("use one of --find-max-batch and --find-max-seq-len")
        dm = dm or H100_80GB_USABLE
        param = "batch" if a.find_max_batch else ("seq_len" if kind == "attention" else "context")
        search = find_max(kind, opts, param, dm, lo=1, alloc_conf=a.alloc_conf, warmup=1, steps=1,
                          multiple=1 if param == "batch" else 64, start=opts.get(param))
        if search["max_fitting"] is not None:
            opts[param] = search["max_fitting"]
    p = predict_workload(kind, opts, warmup=pre if search is None else 1, steps=steps if search is None else 1,
                         alloc_conf=a.alloc_conf, device_memory=dm)
    d = p.to_dict()
    d["options"] = {"kind": kind, **opts}
    if search is not None:
        d["search"] = search
    if a.json:
        json.dump(d, sys.stdout, default=str)
        sys.stdout.write("\n")
    else:
        print(render(d))
    return 0
