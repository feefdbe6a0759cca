"""What is alive at the peak, by category, by source line and by phase, against an analytic account.

For memprof's built-in workloads (``meta['workload']``) the expected bytes follow from the
shapes, so the report can say "the measured peak is the formula plus X" and predict where
device memory runs out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from memprof.analysis import Analysis

ELEM_BYTES = {"fp32": 4, "float32": 4, "tf32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2, "fp64": 8}


@dataclass
class PeakExplanation:
    """Where the peak's bytes are.

    by_category — category, bytes, share (of the measured peak).
    by_site     — site ('file.py:line:function'), bytes, count, share, stack_id (of its largest allocation); largest first.
    by_phase    — phase (when the live bytes were allocated), bytes.
    by_module   — module (the module path that made or owns the bytes, :mod:`memprof.analysis.attribution`;
                  '<no module>' when none), bytes, share, and one bytes column per category; largest first.
    analytic    — item, expected_bytes (empty when the workload is not a built-in one).
    """

    measured_bytes: int
    peak_idx: int
    peak_us: float
    by_category: pd.DataFrame
    by_site: pd.DataFrame
    by_phase: pd.DataFrame
    analytic: pd.DataFrame = field(default_factory=lambda: pd.DataFrame({"item": [], "expected_bytes": []}))
    by_module: pd.DataFrame = field(default_factory=lambda: pd.DataFrame({"module": [], "bytes": [], "share": []}))
    expected_bytes: int | None = None
    difference_bytes: int | None = None
    formula: str = ""
    predicted_oom: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, top: int = 10) -> dict[str, Any]:
        return {
            "measured_bytes": self.measured_bytes, "peak_idx": self.peak_idx, "peak_us": self.peak_us,
            "by_category": {str(c): int(b) for c, b in zip(self.by_category["category"], self.by_category["bytes"])},
            "by_site": [{"site": str(s), "bytes": int(b), "count": int(c), "share": float(sh), "stack_id": int(k)}
                        for s, b, c, sh, k in self.by_site.head(top)[["site", "bytes", "count", "share", "stack_id"]].itertuples(index=False)],
            "by_phase": {str(p): int(b) for p, b in zip(self.by_phase["phase"], self.by_phase["bytes"])},
            "by_module": module_records(self.by_module),
            "analytic": {str(i): int(b) for i, b in zip(self.analytic["item"], self.analytic["expected_bytes"])},
            "expected_bytes": self.expected_bytes, "difference_bytes": self.difference_bytes,
            "formula": self.formula, "predicted_oom": self.predicted_oom,
        }


def _opt(w: dict[str, Any], *names: str, default: Any = None) -> Any:
    for n in names:
        if w.get(n) is not None:
            return w[n]
    return default


def attention_account(w: dict[str, Any]) -> tuple[list[tuple[str, int]], str, dict[str, Any]]:
    """Items of naive attention at its peak, the formula, and the model's coefficients.

    Q, K, V (and the upstream gradient) are B x S x d. The forward keeps the probability matrix
    (B x S x S) for backward while the score matrix is alive: 2 S^2 matrices at the forward peak.
    In backward, with the kept probabilities P alive, the gradient of P (dO @ V^T), the softmax
    backward's output and the gradient through the 1/sqrt(d) scaling are alive together:
    4 S^2 matrices (measured on an H100: the peak is 4.0 x one B x S x S matrix at S >= 4096). SDPA / flash attention keeps no S^2 matrix (only a B x S log-sum-exp).
    """
    b = int(_opt(w, "batch", "batch_size", default=1))
    s = int(_opt(w, "seq_len", "sequence_length", "context_length", default=1))
    d = int(_opt(w, "d", "d_head", "d_model", default=1))
    e = ELEM_BYTES.get(str(_opt(w, "dtype", default="fp32")).lower(), 4)
    bwd = str(_opt(w, "mode", default="forward_backward")) != "forward"
    impl = str(_opt(w, "impl", default="naive"))
    bsd = b * s * d * e
    items = [("Q, K, V inputs (3 x B*S*d)", 3 * bsd)]
    n_lin = 3
    if bwd:
        items.append(("upstream gradient (B*S*d)", bsd))
        n_lin += 1
    if impl == "sdpa":
        items += [("output (B*S*d)", bsd), ("log-sum-exp (B*S fp32)", b * s * 4)]
        n_lin += 1
        return items, "inputs + output + B*S log-sum-exp (no S^2 matrix)", {"k_sq": 0, "n_lin": n_lin, "b": b, "s": s, "d": d, "e": e}
    sq = b * s * s * e
    items.append(("probabilities kept for backward (B*S*S)", sq))
    if bwd:
        items += [("gradient of probabilities dP (B*S*S)", sq), ("softmax backward output dS (B*S*S)", sq),
                  ("gradient through the 1/sqrt(d) scaling (B*S*S)", sq)]
        k_sq = 4
    else:
        items.append(("score matrix (B*S*S)", sq))
        k_sq = 2
    formula = f"{n_lin} x B*S*d*{e} + {k_sq} x B*S*S*{e} bytes (B={b}, S={s}, d={d})"
    return items, formula, {"k_sq": k_sq, "n_lin": n_lin, "b": b, "s": s, "d": d, "e": e}


def transformer_account(w: dict[str, Any]) -> tuple[list[tuple[str, int]], str, dict[str, Any]]:
    """Items of a Transformer LM training step trained with AdamW.

    P = 2*V*d (embedding + untied LM head) + L*(4*d^2 + 2*d*d_ff + 4*d) + 2*d.
    Parameters 4P bytes (fp32), gradients 4P (modes forward_backward and train), AdamW state 8P
    (exp_avg and exp_avg_sq, fp32; mode train).
    Activations per layer: S*B*d*(34 + 5*h*S/d) bytes in 16-bit (Korthikanti et al. 2022,
    no recomputation), doubled for fp32; logits B*S*V, twice (logits and their gradient).
    """
    v = int(_opt(w, "vocab", "vocab_size", default=10000))
    d = int(_opt(w, "d_model", "dim", default=512))
    L = int(_opt(w, "num_layers", "n_layers", "layers", default=4))
    h = int(_opt(w, "num_heads", "n_heads", "heads", default=8))
    dff = int(_opt(w, "d_ff", "ffn_dim", default=4 * d))
    s = int(_opt(w, "context", "context_length", "seq_len", default=256))
    b = int(_opt(w, "batch", "batch_size", default=1))
    e = ELEM_BYTES.get(str(_opt(w, "dtype", default="fp32")).lower(), 4)
    p = 2 * v * d + L * (4 * d * d + 2 * d * dff + 4 * d) + 2 * d
    act_layer = s * b * d * (34 + 5 * h * s / d) * (e / 2)
    mode = str(_opt(w, "mode", default="train"))
    n = max(int(_opt(w, "shards", default=1)), 1)  # FSDP: each rank holds 1/N of parameters, gradients, AdamW state
    per = f" / {n} ranks" if n > 1 else ""
    items = [(f"parameters (P={p:,} x 4 B{per})", 4 * p // n)]
    fixed = 4 * p // n
    if mode in ("forward_backward", "train"):
        items.append((f"gradients (P x 4 B{per})", 4 * p // n))
        fixed += 4 * p // n
    if mode == "train":
        items.append((f"AdamW state (2 x P x 4 B{per})", 8 * p // n))
        fixed += 8 * p // n
    if mode == "forward":  # nothing is kept for backward: about one layer's activations and the logits
        items += [(f"one layer's activations (S*B*d*(34+5*h*S/d)*{e}/2)", int(act_layer)), ("logits (B*S*V*4)", b * s * v * 4)]
        per_sample = act_layer / b + s * v * 4
    else:
        items += [(f"activations ({L} layers x S*B*d*(34+5*h*S/d)*{e}/2)", int(L * act_layer)),
                  ("logits and their gradient (2 x B*S*V*4)", 2 * b * s * v * 4)]
        per_sample = L * act_layer / b + 2 * s * v * 4
    coef = 4 + (4 if mode in ("forward_backward", "train") else 0) + (8 if mode == "train" else 0)
    formula = f"{coef} P{per} (params" + (", grads" if mode != "forward" else "") + (", AdamW" if mode == "train" else "") \
        + ") + activations L*S*B*d*(34+5hS/d)*e/2 + logits B*S*V*4 (x2 with their gradient)"
    return items, formula, {"fixed": fixed, "per_sample": per_sample, "b": b}


def predict_oom(kind: str, coeffs: dict[str, Any], measured: int, expected: int, total: int | None,
                failing: int | None = None, measured_reserved: int | None = None) -> dict[str, Any]:
    """Where the device runs out, from the analytic model calibrated on the measured peak.

    ``failing``: the parameter value (seq_len or batch size) this very file shows failing with an
    out-of-memory error. Its measured peak stops at the failure, so it cannot calibrate the model
    (the uncalibrated account is used), and the prediction never exceeds what failed: at most
    ``failing - 1`` fits.

    ``measured_reserved`` (the allocator's reserved peak): the device must hold what the allocator
    reserves, not only what is allocated; calibrated on it, the model gives the lower end of the
    range (``max_fitting_reserved``): the allocator frees its cache and retries before it fails, so
    the truth lies between the two.
    """
    if not total or not expected:
        return {}
    scale = measured / expected if expected and not failing else 1.0
    out = _predict(kind, coeffs, scale, total)
    if out and measured_reserved and not failing and measured_reserved > measured:
        low = _predict(kind, coeffs, measured_reserved / expected, total)
        out["max_fitting_reserved"] = min(low["max_fitting"], out["max_fitting"])
        out["note"] += (f"; reserved peaked at {measured_reserved / measured:.2f}x allocated here: if the cache "
                        f"grows alike, {out['max_fitting_reserved']:,} is the largest that fits")
    if out and failing:
        if out["max_fitting"] >= failing:
            out["max_fitting"] = int(failing) - 1
            out["note"] += f"; capped: this run failed at {out['parameter']} = {int(failing):,}"
        else:
            out["note"] += f"; this run failed at {out['parameter']} = {int(failing):,}"
        if "first_power_of_two_oom" in out:
            out["first_power_of_two_oom"] = min(out["first_power_of_two_oom"], 2 ** math.ceil(math.log2(failing)))
        if "first_oom" in out:
            out["first_oom"] = min(out["first_oom"], int(failing))
        out["observed_failing"] = int(failing)
    return out


def _predict(kind: str, coeffs: dict[str, Any], scale: float, total: int) -> dict[str, Any]:
    if kind == "attention" and coeffs.get("k_sq"):
        b, d, e = coeffs["b"], coeffs["d"], coeffs["e"]
        a2, a1 = scale * coeffs["k_sq"] * b * e, scale * coeffs["n_lin"] * b * d * e
        s_max = (-a1 + math.sqrt(a1 * a1 + 4 * a2 * total)) / (2 * a2)
        first_bad = 2 ** math.ceil(math.log2(max(s_max, 1.0)))
        if first_bad <= s_max:
            first_bad *= 2
        return {"parameter": "seq_len", "max_fitting": int(s_max), "first_power_of_two_oom": int(first_bad),
                "device_total_bytes": int(total), "calibration": scale,
                "note": f"memory grows as S^2: about {fmt(a2 * coeffs['s'] ** 2)} of the expected peak is in S x S matrices"}
    if kind == "transformer" and coeffs.get("per_sample"):
        fixed, per = scale * coeffs["fixed"], scale * coeffs["per_sample"]
        bmax = (total - fixed) / per
        return {"parameter": "batch_size", "max_fitting": int(max(math.floor(bmax), 0)),
                "first_oom": int(max(math.floor(bmax), 0)) + 1, "device_total_bytes": int(total), "calibration": scale,
                "note": f"each sample adds about {fmt(per)}; parameters, gradients and AdamW state take {fmt(fixed)}"}
    return {}


def fmt(n: float) -> str:
    from memprof.units import fmt_bytes

    return fmt_bytes(n)


def _group(alive: pd.DataFrame, key: str, total: int) -> pd.DataFrame:
    if not len(alive):
        return pd.DataFrame({key: [], "bytes": [], "share": []})
    g = alive.groupby(key, observed=True, sort=False)["size"].sum().sort_values(ascending=False, kind="stable")
    return pd.DataFrame({key: g.index.astype(str), "bytes": g.to_numpy().astype(np.int64),
                         "share": g.to_numpy() / total if total else 0.0})


def group_by_module(alive: pd.DataFrame, total: int) -> pd.DataFrame:
    """Bytes per module (see :attr:`PeakExplanation.by_module`) of a set of live allocations."""
    if not len(alive) or "module" not in alive:
        return pd.DataFrame({"module": [], "bytes": [], "share": []})
    from memprof.analysis.attribution import NO_MODULE

    mod = alive["module"].astype(str).replace("", NO_MODULE)
    t = pd.crosstab(mod, alive["category"].astype(str), values=alive["size"], aggfunc="sum").fillna(0).astype(np.int64)
    t.insert(0, "bytes", t.sum(axis=1))
    t = t.sort_values("bytes", ascending=False, kind="stable")
    t.insert(1, "share", t["bytes"] / total if total else 0.0)
    t.columns.name = None
    return t.rename_axis("module").reset_index()


def module_records(by_module: pd.DataFrame) -> list[dict[str, Any]]:
    """``peak_by_module`` for JSON: [{module, bytes, by_category: {category: bytes}}]."""
    cats = [c for c in by_module.columns if c not in ("module", "bytes", "share")]
    return [{"module": str(r["module"]), "bytes": int(r["bytes"]),
             "by_category": {c: int(r[c]) for c in cats if int(r[c])}} for r in by_module.to_dict("records")]


def explain_peak(analysis: "Analysis") -> PeakExplanation:
    """Break the peak down and compare it with the workload's analytic account."""
    rep, meta = analysis.rep, analysis.meta
    a = analysis.allocations
    pi = rep.peak_idx
    ai, fi = a["alloc_idx"].to_numpy(), a["free_idx"].to_numpy()
    alive = a[(ai <= pi) & ((fi > pi) | (fi < 0))]
    total = int(alive["size"].sum())
    by_cat = _group(alive, "category", total)
    by_phase = _group(alive, "phase", total)[["phase", "bytes"]]
    if len(alive):
        order = alive.sort_values("size", ascending=False, kind="stable")
        g = order.groupby("site", sort=False).agg(bytes=("size", "sum"), count=("size", "size"), stack_id=("stack_id", "first"))
        g = g.sort_values("bytes", ascending=False, kind="stable").reset_index()
        g["site"] = g["site"].astype(object).astype(str)  # a categorical column groups by codes; report plain strings
        g["share"] = g["bytes"] / total if total else 0.0
        by_site = g[["site", "bytes", "count", "share", "stack_id"]]
    else:
        by_site = pd.DataFrame({"site": [], "bytes": [], "count": [], "share": [], "stack_id": []})
    out = PeakExplanation(measured_bytes=int(rep.peak_bytes), peak_idx=int(pi), peak_us=float(rep.peak_time_us),
                          by_category=by_cat, by_site=by_site, by_phase=by_phase, by_module=group_by_module(alive, total))
    w = meta.get("workload") or {}
    kind = str(w.get("kind", "")) if isinstance(w, dict) else ""
    if kind in ("attention", "transformer"):
        opts = {**w, **(w.get("options") or {})} if isinstance(w.get("options"), dict) else dict(w)
        if opts.get("distributed") == "fsdp":  # memprof record transformer --distributed fsdp under torchrun
            opts["shards"] = int((meta.get("dist") or {}).get("world_size") or 1)
        items, formula, coeffs = (attention_account if kind == "attention" else transformer_account)(opts)
        out.analytic = pd.DataFrame({"item": [i for i, _ in items], "expected_bytes": np.array([b for _, b in items], dtype=np.int64)})
        out.expected_bytes = int(sum(b for _, b in items))
        out.difference_bytes = out.measured_bytes - out.expected_bytes
        out.formula = formula
        total_mem = ((meta.get("device") or {}).get("total_memory_bytes"))
        failed = meta.get("status") == "oom" or len(rep.oom_events) > 0
        param = ("seq_len", "sequence_length", "context_length") if kind == "attention" else ("batch", "batch_size")
        failing = _opt(opts, *param) if failed else None
        out.predicted_oom = predict_oom(kind, coeffs, out.measured_bytes, out.expected_bytes, total_mem,
                                        int(failing) if failing else None,
                                        meta.get("peak_reserved_bytes") or rep.peak_reserved_bytes)
    return out
