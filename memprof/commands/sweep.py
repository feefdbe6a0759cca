"""``memprof sweep attention|transformer``: many configurations, one snapshot and table row each."""

from __future__ import annotations

import argparse
import datetime
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


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, help="sweep folder (default snapshots/sweep-<kind>-<date>/); re-run with the same --out to resume")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: cuda if available, else mps, else cpu)")
    p.add_argument("--steps", type=int, default=3, help="measured steps per configuration")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-snapshots", action="store_true", help="time only; write no snapshots")
    p.add_argument("--no-progress", action="store_true")


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("sweep", help="run a grid of attention or transformer configurations into one results table")
    kinds = p.add_subparsers(dest="sweep_kind", metavar="KIND")
    a = kinds.add_parser("attention", help="seq_len x d x implementation")
    a.add_argument("--seq-len", type=_list(int, "seq-len"), default=[256, 1024, 4096, 8192, 16384])
    a.add_argument("--d", type=_list(int, "d"), default=[16, 32, 64, 128])
    a.add_argument("--impl", type=_list(str, "impl"), default=["naive", "compiled", "sdpa"])
    a.add_argument("--batch", type=int, default=8)
    a.add_argument("--mode", default="forward_backward")
    a.add_argument("--dtype", default="fp32")
    a.add_argument("--causal", action="store_true")
    _common(a)
    t = kinds.add_parser("transformer", help="size x mode x compile x dtype")
    t.add_argument("--size", type=_list(str, "size"), default=["small", "medium", "large", "xl", "2.7B"])
    t.add_argument("--mode", type=_list(str, "mode"), default=["forward", "forward_backward", "train"])
    t.add_argument("--compile", type=_compile_opts, default=[False, True], help="both, yes or no")
    t.add_argument("--dtype", type=_list(str, "dtype"), default=["fp32", "bf16"])
    t.add_argument("--context", type=int, default=512)
    t.add_argument("--batch", type=int, default=4)
    t.add_argument("--vocab", type=int, default=10_000)
    _common(t)
    return p


def run(args: argparse.Namespace) -> int:
    from memprof import sweep

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
        from memprof.workloads_info import TRANSFORMER_MODES, TRANSFORMER_SIZES

        for s in args.size:
            if s not in TRANSFORMER_SIZES:
                raise MemprofError(f"unknown transformer size {s!r} (use {', '.join(TRANSFORMER_SIZES)})")
        for m in args.mode:
            if m not in TRANSFORMER_MODES:
                raise MemprofError(f"unknown transformer mode {m!r} (use {', '.join(TRANSFORMER_MODES)})")
        configs = sweep.transformer_grid(args.size, args.mode, args.compile, args.dtype, args.context, args.batch, args.vocab)
    out = Path(args.out or f"snapshots/sweep-{kind}-{datetime.date.today().isoformat()}")
    df = sweep.run_sweep(configs, out, snapshots=not args.no_snapshots, device=args.device, steps=args.steps,
                         warmup=args.warmup, progress=not args.no_progress)  # fmt: skip
    md = sweep.render_markdown(df, f"memprof sweep {kind}")
    (out / "results.md").write_text(md)
    print(sweep.render_terminal(df))
    n_oom = int((df["status"] == "oom").sum())
    print(f"\n{len(df)} configurations ({n_oom} OOM); {out / 'results.csv'} and {out / 'results.md'}")
    return 0
