"""``memprof record``: record a built-in workload or your own script into a snapshot.

    memprof record attention [--impl naive|compiled|sdpa] [--seq-len 1024] [--d 64] ...
    memprof record transformer [--size small|...|tiny] [--mode train] [--compile] ...
    memprof record [-o out.pickle] -- python train.py ARGS
    memprof record [-o RUN] -- torchrun --nproc-per-node N train.py ARGS    # RUN/rank{R}.pickle.gz per rank
    torchrun --nproc-per-node N -m memprof record [-o RUN] -- python train.py ARGS
    torchrun --nproc-per-node N -m memprof record transformer --distributed ddp|fsdp [-o RUN]
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from memprof.errors import MemprofError
from memprof.units import fmt_bytes

EXIT_OOM = 3
ATTN_IMPLS = ("naive", "compiled", "sdpa")
TRANSFORMER_SIZES = ("tiny", "small", "medium", "large", "xl", "2.7B")


class _Parser(argparse.ArgumentParser):
    """A workload's options: a bad flag prints this parser's usage and one error line, as every subcommand does."""


def add_common(p: argparse.ArgumentParser, suppress: bool = False) -> None:
    d = argparse.SUPPRESS if suppress else None
    p.add_argument("-o", "--output", default=d, help="snapshot path (default: snapshots/<config>-<device>.pickle)")
    p.add_argument("--device", default=d, help="cuda, cuda:N, mps or cpu (default: cuda if available, else mps, else cpu)")
    p.add_argument("--steps", type=int, default=argparse.SUPPRESS if suppress else 3, help="measured steps (default 3)")
    p.add_argument("--warmup", type=int, default=argparse.SUPPRESS if suppress else 2, help="warm-up steps before recording (default 2)")
    p.add_argument("--profile-steps", type=int, default=argparse.SUPPRESS if suppress else 1,
                   help="steps profiled (after timing, recording off) to measure GPU busy time per phase; 0: none (default 1)")
    p.add_argument("--max-entries", type=int, default=argparse.SUPPRESS if suppress else 1_000_000, help="trace ring-buffer size (default 1,000,000)")
    p.add_argument("--stacks", choices=("python", "all"), default=argparse.SUPPRESS if suppress else "python", help="stack frames to record (CUDA)")
    p.add_argument("--gzip", action="store_true", default=argparse.SUPPRESS if suppress else False, help="write .pickle.gz")
    p.add_argument("--no-progress", action="store_true", default=argparse.SUPPRESS if suppress else False, help="no progress bar")
    p.add_argument("--live", action="store_true", default=argparse.SUPPRESS if suppress else False,
                   help="publish allocated/reserved bytes, phase and iteration on 127.0.0.1 while running (memprof serve: page Live)")
    p.add_argument("--live-port", type=int, default=argparse.SUPPRESS if suppress else 8765, help="port of --live (default 8765; 0: any free port)")


def attention_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="memprof record attention", description="naive / compiled / SDPA attention on Q, K, V of shape (batch, seq_len, d)")
    p.add_argument("--impl", default="naive", help="naive, compiled or sdpa")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--d", type=int, default=64, help="head dimension")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--causal", action="store_true")
    p.add_argument("--mode", default="forward_backward", help="forward or forward_backward")
    p.add_argument("--dtype", default="fp32", help="fp32 or bf16 (autocast)")
    add_common(p, suppress=True)
    return p


def transformer_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="memprof record transformer", description="a pre-norm Transformer LM (RMSNorm, RoPE, SwiGLU)")
    p.add_argument("--size", default="small", help=", ".join(TRANSFORMER_SIZES))
    p.add_argument("--mode", default="train", help="forward, forward_backward or train")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (eager otherwise)")
    p.add_argument("--dtype", default="fp32", help="fp32 or bf16 (autocast)")
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--vocab", type=int, default=10_000)
    p.add_argument("--d-model", type=int, default=None)
    p.add_argument("--num-layers", type=int, default=None)
    p.add_argument("--num-heads", type=int, default=None)
    p.add_argument("--d-ff", type=int, default=None)
    p.add_argument("--positions", default="rope", help="rope or learned")
    p.add_argument("--distributed", default="none", choices=("none", "ddp", "fsdp"),
                   help="under torchrun: wrap the model with DDP or FSDP2 fully_shard (one snapshot per rank in RUN/)")
    add_common(p, suppress=True)
    return p


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "record",
        help="record a workload (attention, transformer) or your script into a snapshot",
        description="Record a built-in workload or your own script. "
        "`memprof record attention --help` and `memprof record transformer --help` list the workload options; "
        "`memprof record [OPTIONS] -- python train.py ARGS` records a script from its first line; "
        "`memprof record [-o RUN] -- torchrun ... train.py` records every rank into RUN/rank{R}.pickle.gz.",
    )
    add_common(p)
    p.add_argument("target", nargs=argparse.REMAINDER, help="attention ARGS | transformer ARGS | -- python SCRIPT ARGS")
    return p


def _command(args: argparse.Namespace, fallback: list[str]) -> str:
    """The command line that reproduces this run: what the user typed after ``memprof`` (from
    :func:`memprof.cli.main`), else ``fallback`` (the words after ``memprof``)."""
    argv = getattr(args, "_argv", None) or fallback
    return "memprof " + " ".join(shlex.quote(str(a)) for a in argv)


def run(args: argparse.Namespace) -> int:
    target = list(args.target) + list(getattr(args, "_extra", []) or [])
    if target and target[0] == "--":
        target = target[1:]
    if not target:
        raise MemprofError("record what? use `memprof record attention`, `memprof record transformer` or `memprof record -- python SCRIPT`")
    from memprof.recorder.native_stderr import NativeStderrFilter

    with NativeStderrFilter() as native:  # torch.profiler's C++ lines stay out of the progress bar
        rc = run_workload(args, target) if target[0] in ("attention", "transformer") else run_script(args, target)
    note = native.note()
    if note:
        print(note, file=sys.stderr)
    return rc


def _opts(args: argparse.Namespace, sub: argparse.Namespace) -> dict[str, Any]:
    o = {k: getattr(args, k) for k in ("output", "device", "steps", "warmup", "profile_steps", "max_entries", "stacks", "gzip", "no_progress",
                                       "live", "live_port")}
    o.update({k: v for k, v in vars(sub).items() if k in o})
    if o["steps"] < 1 or o["warmup"] < 0 or o["profile_steps"] < 0:
        raise MemprofError("--steps must be >= 1, --warmup >= 0 and --profile-steps >= 0")
    return o


def run_workload(args: argparse.Namespace, target: list[str]) -> int:
    kind = target[0]
    sub = (attention_parser() if kind == "attention" else transformer_parser()).parse_args(target[1:])
    o = _opts(args, sub)
    if kind == "attention" and sub.impl not in ATTN_IMPLS:
        raise MemprofError(f"unknown attention implementation {sub.impl!r} (use {', '.join(ATTN_IMPLS)})")
    common = {"output", "device", "steps", "warmup", "profile_steps", "max_entries", "stacks", "gzip", "no_progress", "live", "live_port"}
    wopts = {k: v for k, v in vars(sub).items() if k not in common}

    from memprof.recorder import dist
    from memprof.recorder.api import live_view
    from memprof.recorder.runner import record_workload
    from memprof.workloads import build, resolve_device

    info = dist.rank_env()
    device = resolve_device(dist.device_name(o["device"], info))
    workload = build(kind, **wopts)
    path = o["output"] or default_path(workload.slug(), device.type, o["gzip"])
    path = dist.output_path(path, True if info is not None and o["gzip"] else None)  # torchrun: RUN/rank{R}...
    pub = live_view(o["live_port"] if o["live"] else False, device, None)
    meta = record_workload(
        workload, path, device, steps=o["steps"], warmup=o["warmup"], max_entries=o["max_entries"], stacks=o["stacks"],
        compress=o["gzip"] or str(path).endswith(".gz"), command=_command(args, ["record", *target]),
        progress=not o["no_progress"], profile_steps=o["profile_steps"],
    )  # fmt: skip
    if pub is not None:  # the Live page links to the snapshot from this last message
        pub.stop(status=meta["status"], snapshot=meta.get("snapshot_path"))
    if meta.get("dist") and meta.get("snapshot_path"):  # this rank's summary, computed where it ran
        from memprof.analysis.ranks import write_rank_summary

        write_rank_summary(meta["snapshot_path"], meta)
    print(summary(meta))
    if meta["status"] == "oom":
        print(f"memprof: OUT OF MEMORY: {workload.slug()} on {meta['device'].get('name')}: {meta.get('error')}; snapshot {path}", file=sys.stderr)
        return EXIT_OOM
    return 0


def default_path(slug: str, device_type: str, gz: bool) -> Path:
    return Path("snapshots") / f"{slug}-{device_type}.pickle{'.gz' if gz else ''}"


def summary(meta: dict[str, Any]) -> str:
    lines = [f"{meta.get('snapshot_path', '(no snapshot)')}  status {meta['status']}"]
    if meta.get("peak_allocated_bytes") is not None:
        lines.append(f"  peak allocated  {fmt_bytes(meta['peak_allocated_bytes'])}   peak reserved {fmt_bytes(meta.get('peak_reserved_bytes') or 0)}")
    for key, label in (("timings_ms", "time"), ("cpu_timings_ms", "host time")):
        t = meta.get(key) or {}
        if t and not (key == "cpu_timings_ms" and t == meta.get("timings_ms")):  # CPU runs: one clock, one line
            parts = [f"{k} {v['mean']:.3f}±{v['std']:.3f} ms" for k, v in t.items() if v.get("mean") is not None]
            lines.append(f"  {label:<15} " + ", ".join(parts))
    return "\n".join(lines)


def run_script(args: argparse.Namespace, target: list[str]) -> int:
    """Run ``python SCRIPT ARGS`` (or ``python -m MODULE ARGS``) in this process, recording from its first line."""
    argv = list(target)
    from memprof.commands import record_torchrun

    if record_torchrun.is_launcher(argv):  # memprof record -- torchrun ...: every worker, RUN/rank{R}.pickle.gz
        return record_torchrun.run_launcher(args, argv)
    if os.path.basename(argv[0]).startswith("python"):
        argv = argv[1:]
    if not argv:
        raise MemprofError("no script given: use `memprof record -- python SCRIPT [ARGS]`")
    module = None
    if argv[0] == "-m":
        if len(argv) < 2:
            raise MemprofError("-m needs a module name")
        module, argv = argv[1], argv[1:]
    else:
        script = Path(argv[0])
        if not script.is_file():
            raise MemprofError(f"script not found: {argv[0]}")
        if argv[0].startswith("-"):
            raise MemprofError(f"unknown record option {argv[0]!r} (options go before `--`)")
    name = module or Path(argv[0]).stem

    import runpy

    from memprof.recorder.api import record  # imports torch before the script's first line runs
    from memprof.recorder.runner import OOM_ERRORS
    from memprof.workloads import resolve_device

    from memprof.recorder import dist

    info = dist.rank_env()
    device = resolve_device(dist.device_name(args.device, info))
    path = args.output or default_path(f"script-{name}", device.type, args.gzip or info is not None)
    path = dist.output_path(path, True if info is not None and args.gzip else None)  # torchrun: RUN/rank{R}...
    old_argv, old_path = sys.argv, list(sys.path)
    sys.argv = list(argv)
    if module is None:
        sys.path.insert(0, str(Path(argv[0]).resolve().parent))
    status = 0
    try:
        with record(path, device=device, max_entries=args.max_entries, stacks=args.stacks,
                    compress=args.gzip or str(path).endswith(".gz"), workload={"kind": "script", "argv": list(argv)},
                    command=_command(args, ["record", "--", "python", *argv]),
                    live=args.live_port if args.live else False):  # fmt: skip
            if module is not None:
                runpy.run_module(module, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except OOM_ERRORS as e:
        print(f"memprof: OUT OF MEMORY in {name}: {str(e).splitlines()[0] if str(e) else ''}; snapshot {path}", file=sys.stderr)
        status = EXIT_OOM
    except Exception as e:  # noqa: BLE001 - the user's script: show its own traceback, keep the snapshot
        print(user_traceback(e), end="", file=sys.stderr)
        print(f"memprof: {name} raised {type(e).__name__} (traceback above); snapshot still written: {path}", file=sys.stderr)
        status = 1
    finally:
        sys.argv, sys.path[:] = old_argv, old_path
    from memprof.snapshot.meta import read_meta

    meta = read_meta(path)
    if meta.get("dist"):  # this rank's summary, computed where it ran
        from memprof.analysis.ranks import write_rank_summary

        write_rank_summary(path, meta)
    meta["snapshot_path"] = str(path)
    print(summary(meta))
    return status


def user_traceback(e: BaseException) -> str:
    """``e``'s traceback as Python prints it, from the user's first frame on: the frames of
    memprof and runpy that ran the script are left out."""
    import runpy
    import traceback

    here = str(Path(__file__).resolve().parents[1])
    tb = e.__traceback__
    while tb is not None and (tb.tb_frame.f_code.co_filename.startswith(here)
                              or tb.tb_frame.f_code.co_filename in (runpy.__file__, "<frozen runpy>")):
        tb = tb.tb_next
    return "".join(traceback.TracebackException(type(e), e, tb).format())
