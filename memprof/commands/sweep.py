"""``memprof sweep attention|transformer``: many configurations, one snapshot and table row each."""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path
from typing import Callable, TypeVar

from memprof.errors import MemprofError

T = TypeVar("T")


def _list(conv: Callable[[str], T], what: str) -> Callable[[str], list[T]]:
    def parse(s: str) -> list[T]:
        try:
            return [conv(x.strip()) for x in s.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad {what} list {s!r}") from None

    return parse


def _compile_opts(s: str) -> list[bool]:
    return {"both": [False, True], "yes": [True], "true": [True], "no": [False], "false": [False], "eager": [False], "compiled": [True]}.get(
        s.lower(), None
    ) or _bad(s)


def _bad(s: str) -> list[bool]:
    raise argparse.ArgumentTypeError(f"--compile takes both, yes or no (got {s!r})")


class _DefaultsFormatter(argparse.HelpFormatter):
    """Help lines end with ``(default: ...)``, lists written as on the command line (``256,1024``)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        h = action.help or ""
        d = action.default
        if "default" in h or d in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return h
        if isinstance(d, list):
            d = {(False, True): "both", (True,): "yes", (False,): "no"}.get(tuple(d)) if all(isinstance(x, bool) for x in d) else ",".join(map(str, d))
        return f"{h} (default: {d})".replace("%", "%%")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, metavar="DIR",
                   help="sweep folder (default: snapshots/sweep-<kind>-<date>/); re-run with the same --out to resume")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: cuda if available, else mps, else cpu)")
    p.add_argument("--steps", type=int, default=3, help="measured steps per configuration")
    p.add_argument("--warmup", type=int, default=2, help="warm-up steps per configuration before timing")
    p.add_argument("--no-snapshots", action="store_true", help="time only; write no snapshots")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("sweep", help="run a grid of attention or transformer configurations into one results table",
                       description="Record every configuration of a grid (one snapshot and one results.csv row each). "
                       "`memprof sweep attention --help` and `memprof sweep transformer --help` list each grid's options.")
    kinds = p.add_subparsers(dest="sweep_kind", metavar="KIND")
    fmt = _DefaultsFormatter
    a = kinds.add_parser("attention", help="seq_len x d x implementation", formatter_class=fmt,
                         description="Attention on Q, K, V of shape (batch, seq_len, d): every seq_len x d x impl. Lists are comma-separated.")
    a.add_argument("--seq-len", type=_list(int, "seq-len"), default=[256, 1024, 4096, 8192, 16384], metavar="N,N,...",
                   help="sequence lengths")
    a.add_argument("--d", type=_list(int, "d"), default=[16, 32, 64, 128], metavar="N,N,...", help="head dimensions")
    a.add_argument("--impl", type=_list(str, "impl"), default=["naive", "compiled", "sdpa"], metavar="IMPL,...",
                   help="implementations: naive, compiled (torch.compile of naive), sdpa")
    a.add_argument("--batch", type=int, default=8, help="batch size")
    a.add_argument("--mode", default="forward_backward", help="forward or forward_backward")
    a.add_argument("--dtype", default="fp32", help="fp32 or bf16 (autocast)")
    a.add_argument("--causal", action="store_true", help="causal mask")
    _common(a)
    t = kinds.add_parser("transformer", help="size x mode x compile x dtype", formatter_class=fmt,
                         description="A pre-norm Transformer LM: every size x mode x compile x dtype. Lists are comma-separated.")
    t.add_argument("--size", type=_list(str, "size"), default=["small", "medium", "large", "xl", "2.7B"], metavar="SIZE,...",
                   help="model sizes: tiny, small, medium, large, xl, 2.7B")
    t.add_argument("--mode", type=_list(str, "mode"), default=["forward", "forward_backward", "train"], metavar="MODE,...",
                   help="forward, forward_backward, train")
    t.add_argument("--compile", type=_compile_opts, default=[False, True], metavar="both|yes|no",
                   help="eager, torch.compile, or both")
    t.add_argument("--dtype", type=_list(str, "dtype"), default=["fp32", "bf16"], metavar="DTYPE,...", help="fp32, bf16 (autocast)")
    t.add_argument("--context", type=int, default=512, help="context length (tokens)")
    t.add_argument("--batch", type=int, default=4, help="batch size")
    t.add_argument("--vocab", type=int, default=10_000, help="vocabulary size")
    _common(t)
    return p


def run(args: argparse.Namespace) -> int:
    from memprof.analysis import sweeps as sweep
    from memprof.commands.sweep_run import run_sweep

    kind = getattr(args, "sweep_kind", None)
    if kind not in ("attention", "transformer"):
        raise MemprofError("sweep what? use `memprof sweep attention ...` or `memprof sweep transformer ...`")
    if args.steps < 1:
        raise MemprofError("--steps must be >= 1")
    if kind == "attention":
        bad = sorted(set(args.impl) - {"naive", "compiled", "sdpa"})
        if bad:
            raise MemprofError(f"unknown attention implementation {bad[0]!r} (use naive, compiled, sdpa)")
        configs = sweep.attention_grid(args.seq_len, args.d, args.impl, args.batch, args.mode, args.dtype, args.causal)
    else:
        from memprof.commands.workload_names import TRANSFORMER_MODES, TRANSFORMER_SIZES

        for s in args.size:
            if s not in TRANSFORMER_SIZES:
                raise MemprofError(f"unknown transformer size {s!r} (use {', '.join(TRANSFORMER_SIZES)})")
        for m in args.mode:
            if m not in TRANSFORMER_MODES:
                raise MemprofError(f"unknown transformer mode {m!r} (use {', '.join(TRANSFORMER_MODES)})")
        configs = sweep.transformer_grid(args.size, args.mode, args.compile, args.dtype, args.context, args.batch, args.vocab)
    out = Path(args.out or f"snapshots/sweep-{kind}-{datetime.date.today().isoformat()}")
    from memprof.recorder.native_stderr import NativeStderrFilter

    with NativeStderrFilter() as native:  # torch.profiler's C++ lines stay out of the progress bar
        df = run_sweep(configs, out, snapshots=not args.no_snapshots, device=args.device, steps=args.steps,
                             warmup=args.warmup, progress=not args.no_progress)  # fmt: skip
    note = native.note()
    if note:
        print(note, file=sys.stderr)
    md = sweep.render_markdown(df, f"memprof sweep {kind}")
    (out / "results.md").write_text(md)
    print(sweep.render_terminal(df))
    n_oom = int((df["status"] == "oom").sum())
    print(f"\n{len(df)} configurations ({n_oom} OOM); {out / 'results.csv'} and {out / 'results.md'}")
    return 0
