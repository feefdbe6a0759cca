"""The Explain page's what-if panel: allocator settings and device memory (and, for memprof's
built-in workloads, batch size and sequence length) -> predicted allocated and reserved, fits or not.

Same settings as recorded: the recording's requests replayed through :mod:`memprof.allocator.model`
(:func:`memprof.allocator.whatif.whatif_dict`). Another batch size or sequence length of a built-in
workload: :func:`memprof.predict.core.predict_workload` (FakeTensorMode; seconds for attention, up to a
minute for a Transformer on a small machine).
"""

from __future__ import annotations

from typing import Any

from dash import Input, Output, State, callback, dcc, html

from memprof.dashboard import common
from memprof.dashboard.state import library
from memprof.errors import MemprofError
from memprof.units import fmt_bytes

GB = 10**9
WORKLOAD_SIZE = {"attention": ("batch", "seq_len"), "transformer": ("batch", "context")}


def panel(snap_id: int, device: int | None) -> html.Div:
    """The panel's inputs, prefilled from the recording's metadata."""
    lib = library()
    meta = lib.meta(lib.get(snap_id))
    w = meta.get("workload") or {}
    total = (meta.get("device") or {}).get("total_memory_bytes")
    size_inputs: list[Any] = []
    if w.get("kind") in WORKLOAD_SIZE:
        b, s = WORKLOAD_SIZE[w["kind"]]
        size_inputs = [html.Label(["batch ", dcc.Input(id="whatif-batch", type="number", min=1, value=w.get(b), debounce=True)]),
                       html.Label([f"{s} ", dcc.Input(id="whatif-seq", type="number", min=1, value=w.get(s), debounce=True)])]
    else:  # keep the callback's inputs present on every page
        size_inputs = [dcc.Input(id="whatif-batch", type="hidden", value=None), dcc.Input(id="whatif-seq", type="hidden", value=None)]
    return html.Div([
        html.H4("what if"),
        dcc.Store(id="whatif-key", data={"snap": snap_id, "device": device}),
        html.Div([
            html.Label(["allocator settings ", dcc.Input(id="whatif-alloc-conf", type="text", debounce=True,
                                                         placeholder="as recorded (or default, expandable_segments:True, ...)")]),
            html.Label(["device memory (GB) ", dcc.Input(id="whatif-device-memory", type="number", min=0, debounce=True,
                                                         value=round(total / GB, 2) if total else None)]),
            *size_inputs,
            html.Button("simulate", id="whatif-run", n_clicks=0),
        ], className="row"),
        dcc.Loading(html.Div(id="whatif-result")),
    ], className="card", id="whatif-panel")


def _int(v: Any, name: str) -> int | None:
    if v in (None, ""):
        return None
    try:
        i = int(v)
    except (TypeError, ValueError):
        raise MemprofError(f"{name} must be a whole number") from None
    if not 1 <= i <= 10_000_000:
        raise MemprofError(f"{name} must be between 1 and 10,000,000")
    return i


def simulate_whatif(key: dict[str, Any], alloc_conf: str | None, device_memory_gb: Any, batch: Any, seq: Any) -> dict[str, Any]:
    """Predicted counters for the panel's inputs: {source, allocated, reserved, fits, device_memory,
    recorded_allocated, recorded_reserved, alloc_conf}."""
    from memprof.allocator.model import AllocConf

    lib = library()
    e = lib.get(key.get("snap"))
    dev = common.parse_device(key.get("device"))
    meta = lib.meta(e)
    conf_text = (alloc_conf or "").strip() or None
    if conf_text is not None:
        AllocConf.parse(conf_text)  # a bad setting is one clear message
    dm = None
    if device_memory_gb not in (None, ""):
        try:
            gb = float(device_memory_gb)
        except (TypeError, ValueError):
            raise MemprofError("device memory must be a number of GB") from None
        if not 0 < gb < 100_000:
            raise MemprofError("device memory must be between 0 and 100,000 GB")
        dm = int(gb * GB)
        if (meta.get("device") or {}).get("total_memory_bytes") and abs(dm - meta["device"]["total_memory_bytes"]) < 0.01 * GB:
            from memprof.predict.device import usable_memory

            dm = usable_memory(meta["device"]["total_memory_bytes"])  # the card as recorded, less its context
    w = meta.get("workload") or {}
    b, s = _int(batch, "batch"), _int(seq, "sequence length")
    kind = w.get("kind")
    if kind in WORKLOAD_SIZE and ((b and b != w.get("batch")) or (s and s != w.get(WORKLOAD_SIZE[kind][1]))):
        from memprof.predict.core import predict_workload

        keys = ("impl", "seq_len", "d", "batch", "causal", "mode", "dtype") if kind == "attention" else (
            "size", "mode", "compile", "dtype", "context", "batch", "vocab", "d_model", "num_layers", "num_heads", "d_ff", "positions")
        opts = {k: w[k] for k in keys if w.get(k) is not None}
        opts["batch"] = b or opts.get("batch")
        opts[WORKLOAD_SIZE[kind][1]] = s or opts.get(WORKLOAD_SIZE[kind][1])
        p = predict_workload(kind, opts, warmup=1, steps=1, alloc_conf=conf_text, device_memory=dm)
        return {"source": "memprof predict (fake tensors)", "allocated": p.max_memory_allocated,
                "reserved": p.max_memory_reserved, "fits": p.fits, "device_memory": dm,
                "recorded_allocated": meta.get("peak_allocated_bytes"), "recorded_reserved": meta.get("peak_reserved_bytes"),
                "alloc_conf": p.sim.conf.describe()}
    from memprof.allocator.whatif import whatif_dict
    from memprof.snapshot.load import load

    snap = load(e.path)
    device = snap.default_device() if dev is None else dev
    snap.check_device(device)
    d = whatif_dict(snap, device, conf_text, dm, meta)
    r = d["recorded"]
    return {"source": "the recorded requests replayed through the allocator model", "allocated": d["simulated_max_memory_allocated"],
            "reserved": d["simulated_max_memory_reserved"], "fits": not d["oom"], "device_memory": dm,
            "recorded_allocated": r["max_memory_allocated"] or r["simulated_max_memory_allocated"],
            "recorded_reserved": r["max_memory_reserved"] or r["simulated_max_memory_reserved"], "alloc_conf": d["alloc_conf"]}


def result_view(r: dict[str, Any]) -> html.Div:
    fit = "fits" if r["fits"] else "DOES NOT FIT"
    rows = [html.Div(fit + (f" in {fmt_bytes(r['device_memory'])}" if r["device_memory"] else ""),
                     className="verdict", id="whatif-fits"),
            html.P(f"predicted max_memory_allocated {fmt_bytes(r['allocated'])} (recorded {fmt_bytes(r['recorded_allocated'])}), "
                   f"max_memory_reserved {fmt_bytes(r['reserved'])} (recorded {fmt_bytes(r['recorded_reserved'])})", id="whatif-numbers"),
            html.P(f"allocator settings: {r['alloc_conf']}; from {r['source']}", className="sub")]
    return html.Div(rows)


def on_run(_n: int, key: dict[str, Any], conf: str | None, dm: Any, batch: Any, seq: Any) -> Any:
    return common.guard(lambda: result_view(simulate_whatif(key or {}, conf, dm, batch, seq)))


def register() -> None:
    """Register the panel's callback. Called by the Explain page module, which Dash executes anew for
    every app it builds; a callback registered at this module's (one) import would go to the first app
    only (Dash moves global callbacks into the first app that starts serving)."""
    callback(Output("whatif-result", "children"), Input("whatif-run", "n_clicks"),
             State("whatif-key", "data"), State("whatif-alloc-conf", "value"), State("whatif-device-memory", "value"),
             State("whatif-batch", "value"), State("whatif-seq", "value"), prevent_initial_call=True)(on_run)
