"""Sweeps: many configurations of a built-in workload, one row (and snapshot) each.

Data flow: a grid of configs (:func:`attention_grid`, :func:`transformer_grid`) ->
:func:`memprof.commands.sweep_run.run_sweep` (records each through the recorder, one row each in
``results.csv``) -> pure table functions (:func:`compare`, :func:`attention_physics`,
:func:`oom_prediction`) -> :func:`render_markdown`. No torch, no recorder here.
"""

from __future__ import annotations

import csv
import itertools
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from memprof.errors import MemprofError

MB = 1e6
PHASE_COLS = ("forward", "backward", "optimizer", "step")
RESULT_COLUMNS = (
    "key", "kind", "impl", "seq_len", "d", "batch", "causal", "size", "mode", "compile", "dtype", "context", "vocab",
    "status", "forward_ms", "forward_std", "backward_ms", "backward_std", "optimizer_ms", "optimizer_std",
    "step_ms", "step_std", "peak_allocated_mb", "peak_replay_mb", "device_total_mb", "device", "snapshot", "error",
)  # fmt: skip


def attention_grid(
    seq_lens: Sequence[int], ds: Sequence[int], impls: Sequence[str], batch: int = 8,
    mode: str = "forward_backward", dtype: str = "fp32", causal: bool = False,
) -> list[dict[str, Any]]:  # fmt: skip
    """Attention configs, impl varying fastest so comparisons sit together."""
    return [
        {"kind": "attention", "impl": i, "seq_len": s, "d": d, "batch": batch, "mode": mode, "dtype": dtype, "causal": causal}
        for s, d, i in itertools.product(seq_lens, ds, impls)
    ]


def transformer_grid(
    sizes: Sequence[str], modes: Sequence[str], compiles: Sequence[bool], dtypes: Sequence[str],
    context: int = 512, batch: int = 4, vocab: int = 10_000,
) -> list[dict[str, Any]]:  # fmt: skip
    return [
        {"kind": "transformer", "size": s, "mode": m, "compile": c, "dtype": t, "context": context, "batch": batch, "vocab": vocab}
        for s, m, t, c in itertools.product(sizes, modes, dtypes, compiles)
    ]


def config_key(cfg: dict[str, Any]) -> str:
    """A stable file-name-safe key: the workload's slug."""
    if cfg["kind"] == "attention":
        mode = {"forward": "fwd", "forward_backward": "fwdbwd"}[cfg["mode"]]
        causal = "-causal" if cfg.get("causal") else ""
        return f"attention-{cfg['impl']}-s{cfg['seq_len']}-d{cfg['d']}-b{cfg['batch']}{causal}-{mode}-{cfg['dtype']}"
    mode = {"forward": "fwd", "forward_backward": "fwdbwd", "train": "train"}[cfg["mode"]]
    comp = "compiled" if cfg["compile"] else "eager"
    return f"transformer-{cfg['size']}-ctx{cfg['context']}-b{cfg['batch']}-{mode}-{comp}-{cfg['dtype']}"


def read_results(path: Path) -> pd.DataFrame:
    """``results.csv`` as a DataFrame with :data:`RESULT_COLUMNS` (empty when absent)."""
    if not path.exists():
        return pd.DataFrame(columns=list(RESULT_COLUMNS))
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.EmptyDataError) as e:
        raise MemprofError(f"{path}: unreadable results ({e})") from None
    return df


def append_row(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(RESULT_COLUMNS), extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({k: row.get(k) for k in RESULT_COLUMNS})


def meta_to_row(cfg: dict[str, Any], meta: dict[str, Any], replay_peak: int | None) -> dict[str, Any]:
    """One results row from a config and the recorder's metadata."""
    row: dict[str, Any] = {"key": config_key(cfg), **cfg, "status": meta.get("status")}
    t = meta.get("timings_ms") or {}
    for ph in PHASE_COLS:
        if ph in t and meta.get("status") == "ok":
            row[f"{ph}_ms"], row[f"{ph}_std"] = round(t[ph]["mean"], 4), round(t[ph]["std"], 4)
    if meta.get("status") == "ok":
        pa = meta.get("peak_allocated_bytes")
        row["peak_allocated_mb"] = None if pa is None else round(pa / MB, 3)
        row["peak_replay_mb"] = None if replay_peak is None else round(replay_peak / MB, 3)
    dev = meta.get("device") or {}
    row["device"] = dev.get("name")
    row["device_total_mb"] = None if not dev.get("total_memory_bytes") else round(dev["total_memory_bytes"] / MB, 1)
    row["snapshot"] = meta.get("snapshot_path")
    row["error"] = meta.get("error")
    return row


# ---- tables (pure) --------------------------------------------------------------------


def compare(df: pd.DataFrame, by: str, base: str, other: str, on: Sequence[str],
            labels: tuple[str, str] | None = None) -> pd.DataFrame:
    """Speedups and memory change of ``other`` vs ``base`` (values of column ``by``) for rows matching on ``on``.

    Columns: the ``on`` columns, then for each timed phase present ``<phase>_ms_<base>``,
    ``<phase>_ms_<other>``, ``<phase>_speedup`` (base time / other time), then
    ``peak_mb_<base>``, ``peak_mb_<other>``, ``peak_change_pct``, ``status_<base>``, ``status_<other>``.
    ``labels`` renames base/other in those column names (e.g. compile False/True -> eager/compiled).
    """
    on = list(on)
    la, lb = labels or (base, other)
    df = df.copy()
    df[by] = df[by].astype(str)
    a = df[df[by] == str(base)].set_index(on)
    b = df[df[by] == str(other)].set_index(on)
    idx = a.index.intersection(b.index)
    out = pd.DataFrame(index=idx)
    for ph in PHASE_COLS:
        col = f"{ph}_ms"
        if col in df and df[col].notna().any():
            out[f"{col}_{la}"] = a.loc[idx, col]
            out[f"{col}_{lb}"] = b.loc[idx, col]
            out[f"{ph}_speedup"] = a.loc[idx, col] / b.loc[idx, col]
    pa, pb = _peak(a.loc[idx]), _peak(b.loc[idx])
    out[f"peak_mb_{la}"], out[f"peak_mb_{lb}"] = pa, pb
    out["peak_change_pct"] = (pb / pa - 1.0) * 100.0
    out[f"status_{la}"], out[f"status_{lb}"] = a.loc[idx, "status"], b.loc[idx, "status"]
    return out.reset_index()


def _peak(df: pd.DataFrame) -> pd.Series:
    """Peak MB per row: the replayed snapshot's when there is one, else the allocator's."""
    rep = pd.to_numeric(df.get("peak_replay_mb"), errors="coerce")
    alloc = pd.to_numeric(df.get("peak_allocated_mb"), errors="coerce")
    return rep.fillna(alloc) if rep is not None else alloc


def sxs_matrix_bytes(batch: int, seq_len: int, dtype: str) -> int:
    """Bytes of one B x S x S score or probability matrix (4 bytes fp32, 2 bytes bf16/fp16)."""
    return int(batch) * int(seq_len) ** 2 * (2 if dtype in ("bf16", "fp16") else 4)


def attention_physics(df: pd.DataFrame) -> pd.DataFrame:
    """Naive attention rows with the expected size of the S x S matrices beside the measured peak.

    Columns: seq_len, d, batch, dtype, status, sxs_matrix_mb (one B x S x S matrix),
    saved_for_backward_mb (the probabilities softmax and ``probs @ V`` keep),
    forward_transient_mb (scores, scaled scores and probabilities alive together in forward),
    peak_mb, peak_over_matrix (peak / one matrix).
    """
    n = df[(df["kind"] == "attention") & (df["impl"] == "naive")].copy()
    if n.empty:
        return pd.DataFrame(columns=["seq_len", "d", "batch", "dtype", "status", "sxs_matrix_mb", "saved_for_backward_mb",
                                     "forward_transient_mb", "peak_mb", "peak_over_matrix"])  # fmt: skip
    m = np.array([sxs_matrix_bytes(b, s, t) for b, s, t in zip(n["batch"], n["seq_len"], n["dtype"])], dtype=float) / MB
    out = n[["seq_len", "d", "batch", "dtype", "status"]].copy()
    out["sxs_matrix_mb"] = m
    out["saved_for_backward_mb"] = m
    out["forward_transient_mb"] = 3 * m
    out["peak_mb"] = _peak(n).to_numpy()
    out["peak_over_matrix"] = out["peak_mb"] / m
    return out.reset_index(drop=True)


def oom_prediction(df: pd.DataFrame, impl: str = "naive") -> pd.DataFrame:
    """Per (impl, d): fit peak ≈ a + b·S² on the measured rows, predict where it exceeds device memory.

    Columns: impl, d, n_points, a_mb, b_bytes_per_s2, device_total_mb, predicted_oom_seq_len,
    largest_ok_seq_len, first_oom_seq_len (observed; NaN when none).
    """
    rows = []
    att = df[df["kind"] == "attention"]
    for (im, d), g in att.groupby(["impl", "d"]):
        if impl and im != impl:
            continue
        ok = g[g["status"] == "ok"]
        peak = _peak(ok).to_numpy(dtype=float) * MB
        s2 = ok["seq_len"].to_numpy(dtype=float) ** 2
        total = pd.to_numeric(g["device_total_mb"], errors="coerce").max() * MB
        a = b = pred = math.nan
        if len(ok) >= 2 and np.ptp(s2) > 0:
            b, a = np.polyfit(s2, peak, 1)
            if b > 0 and total == total:
                pred = math.sqrt(max(total - a, 0.0) / b)
        ooms = g[g["status"] == "oom"]["seq_len"]
        rows.append({
            "impl": im, "d": d, "n_points": len(ok), "a_mb": a / MB if a == a else a, "b_bytes_per_s2": b,
            "device_total_mb": total / MB if total == total else total,
            "predicted_oom_seq_len": pred, "largest_ok_seq_len": ok["seq_len"].max() if len(ok) else math.nan,
            "first_oom_seq_len": ooms.min() if len(ooms) else math.nan,
        })  # fmt: skip
    return pd.DataFrame(rows)


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, (float, np.floating)):
        return f"{v:.{digits}f}"
    return str(v)


def md_table(df: pd.DataFrame, columns: Iterable[str] | None = None) -> str:
    cols = list(columns or df.columns)
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def main_table(df: pd.DataFrame) -> pd.DataFrame:
    """Display table: config columns, 'mean ± std' per timed phase, peaks, status."""
    kind = df["kind"].iloc[0] if len(df) else "attention"
    cfg = ["impl", "seq_len", "d", "batch", "mode", "dtype"] if kind == "attention" else ["size", "mode", "compile", "dtype", "context", "batch"]
    out = df[cfg].copy()
    for ph in PHASE_COLS:
        if f"{ph}_ms" in df and pd.to_numeric(df[f"{ph}_ms"], errors="coerce").notna().any():
            out[f"{ph} (ms)"] = [
                "OOM" if s == "oom" else ("-" if m != m else f"{m:.3f} ± {sd:.3f}")
                for m, sd, s in zip(pd.to_numeric(df[f"{ph}_ms"], errors="coerce"), pd.to_numeric(df[f"{ph}_std"], errors="coerce"), df["status"])
            ]  # fmt: skip
    to_mib = MB / 2**20  # results.csv keeps MB; what people read is MiB, as every other memprof output
    out["peak MiB (snapshot)"] = [("OOM" if s == "oom" else _fmt(v * to_mib, 2)) for v, s in zip(pd.to_numeric(df["peak_replay_mb"], errors="coerce"), df["status"])]
    out["peak MiB (allocator)"] = [("OOM" if s == "oom" else _fmt(v * to_mib, 2)) for v, s in zip(pd.to_numeric(df["peak_allocated_mb"], errors="coerce"), df["status"])]
    out["status"] = df["status"]
    return out


def comparisons(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(title, table) pairs: naive vs compiled and naive vs sdpa, or eager vs compiled."""
    out: list[tuple[str, pd.DataFrame]] = []
    if df.empty:
        return out
    if df["kind"].iloc[0] == "attention":
        impls = set(df["impl"].astype(str))
        for other in ("compiled", "sdpa"):
            if {"naive", other} <= impls:
                out.append((f"naive vs {other}", compare(df, "impl", "naive", other, ["seq_len", "d", "batch", "mode", "dtype"])))
    else:
        if {"True", "False"} <= set(df["compile"].astype(str)):
            out.append(("eager vs compiled", compare(df, "compile", "False", "True", ["size", "mode", "dtype", "context", "batch"], labels=("eager", "compiled"))))
        if {"fp32", "bf16"} <= set(df["dtype"].astype(str)):
            out.append(("fp32 vs bf16", compare(df, "dtype", "fp32", "bf16", ["size", "mode", "compile", "context", "batch"])))
    return out


_ORDER = {"naive": 0, "compiled": 1, "sdpa": 2, "tiny": 0, "small": 1, "medium": 2, "large": 3, "xl": 4, "2.7B": 5,
          "forward": 0, "forward_backward": 1, "train": 2, "fp32": 0, "bf16": 1}


def grid_order(df: pd.DataFrame) -> pd.DataFrame:
    """Rows in grid order (sizes ascending, naive before compiled before sdpa), whatever order they finished in."""
    keys = [c for c in ("size", "seq_len", "d", "mode", "dtype", "compile", "impl") if c in df and df[c].notna().any()]
    return df.sort_values(keys, key=lambda col: col.map(lambda v: _ORDER.get(str(v), v)), kind="stable", ignore_index=True)


def render_markdown(df: pd.DataFrame, title: str) -> str:
    df = grid_order(df)
    parts = [f"# {title}", "", md_table(main_table(df))]
    for name, t in comparisons(df):
        parts += ["", f"## {name}", "", "speedup = first time / second time; peak change = second vs first.", "", md_table(t)]
    if len(df) and df["kind"].iloc[0] == "attention":
        phys = attention_physics(df)
        if len(phys):
            parts += ["", "## naive attention: S x S matrices vs measured peak", "", md_table(phys)]
        pred = oom_prediction(df)
        if len(pred):
            parts += ["", "## naive attention: predicted OOM (peak ≈ a + b·S² vs device memory) vs observed", "", md_table(pred)]
    return "\n".join(parts) + "\n"


def render_terminal(df: pd.DataFrame) -> str:
    t = main_table(df)
    return t.to_string(index=False)
