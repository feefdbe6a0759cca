"""Dashboard pages as a PyTorch engineer reads them: links keep the snapshot, Explain speaks in
units, OOM snapshots get an OOM section, CPU runs are not described in CUDA terms."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from dashwalk import walk as _walk  # noqa: E402

pytest.importorskip("dash")

ROOT = Path(__file__).resolve().parents[2] / "snapshots"
GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden" / "attention_naive_fwdbwd.pickle.gz"
EAGER = "h100/transformer-small-train-eager-bf16.pickle.gz"
OOM = "h100/attention-naive-s28672-d64-b8-oom.pickle.gz"
SCRIPT = "h100/script-train_tiny.pickle.gz"
RAW_FLOAT = re.compile(r"^-?\d+\.\d{4,}$")  # 0.6298303899283092
RAW_INT = re.compile(r"^\d{5,}$")  # 1774617600


@pytest.fixture(scope="module")
def lib():
    from memprof.dashboard import create_app
    from memprof.dashboard.state import library

    create_app(ROOT)
    return library()




def _ids(c: Any) -> dict[str, Any]:
    return {x.id: x for x in _walk(c) if getattr(x, "id", None)}


def _cells(tbl: Any) -> list[str]:
    return [str(v) for row in tbl.data for v in row.values()]


# --- navigation -------------------------------------------------------------

def test_every_page_link_keeps_the_snapshot_and_device(lib) -> None:
    from memprof.dashboard import PAGES
    from memprof.dashboard.common import nav_hrefs

    hrefs = dict(zip([n for n, _ in PAGES], nav_hrefs("?snap=6&device=1")))
    assert hrefs["Timeline"] == "/timeline?snap=6&device=1"
    assert hrefs["Allocations"] == "/allocations?snap=6&device=1"
    assert hrefs["Explain"] == "/explain?snap=6&device=1"
    assert hrefs["Library"] == "/" and hrefs["Sweeps"] == "/sweeps"
    # from Compare, the first compared snapshot; with nothing selected, the plain pages
    assert dict(zip([n for n, _ in PAGES], nav_hrefs("?snaps=3,5")))["Explain"] == "/explain?snap=3"
    assert nav_hrefs("") == [h for _, h in PAGES] and nav_hrefs(None) == [h for _, h in PAGES]
    # a relative path as the key is kept (url-encoded), never dropped
    assert nav_hrefs("?snap=h100/a.pickle.gz")[1] == "/timeline?snap=h100%2Fa.pickle.gz"


def test_stack_panel_link_keeps_the_device(lib) -> None:
    from memprof.dashboard.pages import timeline

    sid = lib.get(EAGER).id
    m = lib.model(sid, None)
    row = int(m.allocs["size"].to_numpy().argmax())
    panel = timeline.stack_panel({"points": [{"customdata": row, "x": m.peak_ms}]}, [], {"snap": sid, "device": 0})
    links = [c for c in _walk(panel) if getattr(c, "href", None)]
    assert links and links[0].href.startswith(f"/allocations?snap={sid}&device=0&t=")


# --- Explain ----------------------------------------------------------------

def test_explain_numbers_have_units_and_per_phase_is_a_table(lib) -> None:
    from memprof.dashboard.pages import explain

    sid = lib.get(EAGER).id
    ids = _ids(explain.explain_content(sid, None))
    nums = ids["explain-numbers"]
    values = [r["value"] for r in nums.data]
    assert not any(RAW_FLOAT.match(v) or RAW_INT.match(v.replace(",", "")) and "," not in v for v in values), values
    assert not any(v.startswith("{") for v in values)  # no raw dict
    q = {r["quantity"]: r["value"] for r in nums.data}
    meta = lib.model(sid, None).meta
    assert q["GPU busy"] == f"{meta['gpu_busy_ms']['step']:,.2f} ms"
    # per phase: one row per phase, GPU busy in ms straight from the metadata
    ph = {r["phase"]: r for r in ids["explain-phases"].data}
    assert {"forward", "backward", "optimizer"} <= set(ph)
    assert ph["forward"]["GPU busy"] == f"{meta['gpu_busy_ms']['forward']:.2f} ms"
    assert all(re.fullmatch(r"\d+%", r["utilisation"]) for r in ph.values())


def test_explain_tables_show_byte_units(lib) -> None:
    from memprof.dashboard.pages import explain

    ids = _ids(explain.explain_content(lib.get(EAGER).id, None))
    for tid in ("explain-sites", "explain-analytic"):
        cells = _cells(ids[tid])
        assert not any(RAW_INT.match(c) for c in cells), (tid, cells)
        assert any(re.search(r"\d \s?(KiB|MiB|GiB)", c) or re.search(r"\d (KiB|MiB|GiB)", c) for c in cells), tid


def test_site_categories_agree_with_the_category_chart(lib) -> None:
    from memprof.present import views
    from memprof.units import fmt_bytes

    m = lib.model(lib.get(EAGER).id, None)
    at_peak = views.alive_at(m, m.peak_ms)
    sites = views.by_site(at_peak, top=50).set_index("site")
    # independently: bytes per (site, category) over the allocations alive at the peak
    per: dict[str, dict[str, int]] = {}
    for s, c, b in zip(at_peak["site"], at_peak["category"], at_peak["size"]):
        per.setdefault(str(s), {}).setdefault(str(c), 0)
        per[str(s)][str(c)] += int(b)
    mixed = 0
    for site, label in sites["category"].items():
        cats = per[str(site)]
        if len(cats) == 1:
            assert label == next(iter(cats))
        else:
            mixed += 1
            for c, b in cats.items():
                assert f"{c} {fmt_bytes(b)}" in label  # every category with its own bytes: never one label for all
    assert mixed >= 1  # <no Python frames> mixes optimizer state and parameters in this snapshot


def test_explain_analytic_account_hidden_and_explained_for_scripts(lib) -> None:
    from memprof.dashboard.pages import explain

    ids = _ids(explain.explain_content(lib.get(SCRIPT).id, None))
    assert "explain-analytic" not in ids
    assert "built-in workloads" in ids["explain-analytic-none"].children


def test_explain_oom_section_on_oom_snapshots_only(lib) -> None:
    from memprof.dashboard.pages import explain

    from memprof.units import fmt_bytes

    sid = lib.get(OOM).id
    m = lib.model(sid, None)
    body = explain.explain_content(sid, None)
    ids = _ids(body)
    # first on the page, with the time of the OOM and what the allocator had
    assert getattr(body[0], "id", None) == "explain-oom"
    assert ids["explain-oom-title"].children == f"Out of memory at {m.oom_ms[0]:.3f} ms"
    tbl = next(t for t in _walk(ids["explain-oom"]) if getattr(t, "data", None))
    rows = {r["quantity"]: r["value"] for r in tbl.data}
    o = m.analysis.oom
    assert rows["requested"] == fmt_bytes(o["requested_bytes"]) and rows["reserved"] == fmt_bytes(o["reserved_bytes"])
    assert "explain-oom" not in _ids(explain.explain_content(lib.get(EAGER).id, None))


def test_cpu_run_not_described_in_cuda_terms(tmp_path: Path, lib, capsys: pytest.CaptureFixture[str]) -> None:
    from memprof.dashboard import create_app
    from memprof.dashboard.pages import explain
    from memprof.cli import main

    # GIVEN a snapshot whose metadata says it was recorded on the CPU
    shutil.copy(GOLDEN, tmp_path / "cpu.pickle.gz")
    t = {"forward": {"mean": 1.0, "std": 0.0, "n": 2}, "backward": {"mean": 2.0, "std": 0.0, "n": 2}}
    (tmp_path / "cpu.meta.json").write_text(json.dumps({"device": {"type": "cpu", "name": "x86_64"}, "timings_ms": t,
                                                        "cpu_timings_ms": t, "peak_allocated_bytes": 1000, "status": "ok"}))
    try:
        create_app(tmp_path)
        body = explain.explain_content(0, None)
        text = " ".join(str(getattr(c, "children", "")) for c in _walk(body) if isinstance(getattr(c, "children", None), str))
        cells = " ".join(_cells(_ids(body)["explain-numbers"]))
        assert "cuda events" not in cells.lower() and "host timers" in cells
        assert "max_memory_allocated" not in text and "GPU busy time on a profiled step" not in text
        assert "--device cuda" in text  # what to do to answer the GPU question
    finally:
        create_app(ROOT)
    # and the CLI: no torch.cuda counter named for a CPU run
    assert main(["stats", str(tmp_path / "cpu.pickle.gz"), "--no-cache"]) == 0
    out = capsys.readouterr().out
    assert "torch.cuda" not in out and "the recorder's own count" in out


# --- units and sweeps ---------------------------------------------------------

def _strings(c: Any) -> list[str]:
    """Every text a page shows: component strings, table headers and cells, figure titles and axes."""
    out: list[str] = []
    for x in _walk(c):
        ch = getattr(x, "children", None)
        if isinstance(ch, str):
            out.append(ch)
        for col in getattr(x, "columns", None) or []:
            out.append(str(col.get("name", "")))
        fig = getattr(x, "figure", None)
        if fig is not None:
            lay = fig.layout
            out += [str(lay.title.text or ""), str(lay.xaxis.title.text or ""), str(lay.yaxis.title.text or "")]
            out += [str(t.hovertemplate or "") for t in fig.data]
    return out


def test_one_unit_convention_binary_on_every_page(lib) -> None:
    from memprof.dashboard.pages import allocations, compare, explain, sweeps, timeline

    sid = lib.get(EAGER).id
    pages = [timeline.layout(snap=str(sid)), allocations.layout(snap=str(sid)), explain.layout(snap=str(sid)),
             compare.update([sid, lib.get(OOM).id])]
    pages += [sweeps.update(i) for i, _, _ in lib.sweeps()]
    texts = [t for p in pages for t in _strings(p)]
    assert texts
    decimal = [t for t in texts if re.search(r"\bMB\b|\bGB\b|_mb\b", t)]
    assert not decimal, decimal[:5]
    assert any("MiB" in t for t in texts)


def test_sweep_peak_plotted_in_mib_equal_to_the_csv(lib) -> None:
    import pandas as pd

    from memprof.dashboard.pages import sweeps

    found = {rel: (i, p) for i, rel, p in lib.sweeps()}
    i, path = found["sweep-attention-h100"]
    ids = _ids(sweeps.update(i))
    fig = ids["sweeps-peak"].figure
    assert "MiB" in fig.layout.title.text
    csv = pd.read_csv(path)
    ok = csv[csv["status"] == "ok"]
    want = sorted(round(v * 1e6 / 2**20, 2) for v in ok["peak_allocated_mb"].dropna())
    got = sorted(float(y) for t in fig.data if "OOM" not in str(t.name) for y in t.y if y == y)
    assert got == pytest.approx(want)


def test_sweep_series_keep_their_colour_in_every_plot(lib) -> None:
    from memprof.dashboard.pages import sweeps

    for rel in ("sweep-attention-h100", "sweep-transformer-h100"):
        i = {r: j for j, r, _ in lib.sweeps()}[rel]
        ids = _ids(sweeps.update(i))
        colour: dict[str, str] = {}
        for gid in ("sweeps-forward", "sweeps-backward", "sweeps-step", "sweeps-peak"):
            if gid not in ids:
                continue
            for t in ids[gid].figure.data:
                fam = str(t.name).split(" ")[0]
                c = t.line.color if t.line and t.line.color else t.marker.color
                assert colour.setdefault(fam, c) == c, (rel, gid, fam)
        assert len(set(colour.values())) == len(colour)  # different implementations, different colours
        for t in ids["sweeps-speedup"].figure.data:  # speedup lines: the colour of their implementation / mode
            vals = [w.split("=", 1)[-1] for w in str(t.name).split(" vs ")[0].split()]
            fam = next(v for v in vals if v in colour)
            assert t.line.color == colour[fam], (rel, t.name)


def test_transformer_sweep_table_has_no_empty_columns(lib) -> None:
    from memprof.dashboard.pages import sweeps

    i = {r: j for j, r, _ in lib.sweeps()}["sweep-transformer-h100"]
    tbl = _ids(sweeps.update(i))["sweeps-table"]
    cols = [c["id"] for c in tbl.columns]
    assert "impl" not in cols and "seq_len" not in cols and "d" not in cols
    for c in cols:
        assert any(str(r.get(c, "")).strip() not in ("", "None", "nan") for r in tbl.data), c
    assert "peak_allocated_mib" in cols and "peak_allocated_mb" not in cols


# --- Compare ------------------------------------------------------------------

def test_compare_aligns_every_phase_of_every_iteration(lib) -> None:
    import numpy as np

    from memprof.dashboard.pages import compare

    COMPILED = "h100/transformer-small-train-compiled-bf16.pickle.gz"
    a, b = lib.model(lib.get(EAGER).id, None), lib.model(lib.get(COMPILED).id, None)
    curves, phases, how = compare.aligned_curves([a, b], [EAGER, COMPILED])
    assert how.startswith("each phase of each iteration aligned")
    # every (phase, iteration) of the compiled run now starts and ends where the eager one's does
    pa = a.phases.set_index(["phase", "iteration"])
    for r in phases[1].itertuples(index=False):
        ref = pa.loc[(r.phase, r.iteration)]
        assert r.start_ms == pytest.approx(ref["start_ms"], abs=1e-6) and r.end_ms == pytest.approx(ref["end_ms"], abs=1e-6)
    # e.g. compiled's second forward (42.8 ms on its clock) sits on eager's (66.7 ms)
    f1 = b.phases[(b.phases["phase"] == "forward") & (b.phases["iteration"] == 1)].iloc[0]
    lab, x, y, own = curves[1]
    i = int(np.searchsorted(own, f1["start_ms"]))
    assert x[i] == pytest.approx(np.interp(own[i], [f1["start_ms"], f1["end_ms"]], [pa.loc[("forward", 1), "start_ms"], pa.loc[("forward", 1), "end_ms"]]), abs=1e-6)
    assert np.all(np.diff(x) >= -1e-9)  # time still runs forward
    # inside a phase the mapping is linear: a point a third into compiled's backward 0 lands a third into eager's
    b0, e0 = b.phases.iloc[1], a.phases.iloc[1]
    t = b0["start_ms"] + (b0["end_ms"] - b0["start_ms"]) / 3
    from memprof.present import views
    assert views.warp(np.array([t]), views.phase_knots(a, b))[0] == pytest.approx(e0["start_ms"] + (e0["end_ms"] - e0["start_ms"]) / 3)


def test_compare_figure_own_phase_bands_and_y_from_zero(lib) -> None:
    from memprof.dashboard.pages import compare

    COMPILED = "h100/transformer-small-train-compiled-bf16.pickle.gz"
    ids = [lib.get(EAGER).id, lib.get(COMPILED).id]
    fig = _ids(compare.update(ids))["compare-graph"].figure
    assert fig.layout.yaxis.rangemode == "tozero"
    strips = [s for s in fig.layout.shapes if s.yref == "paper" and s.y0 >= 1.0]
    n_a, n_b = (len(lib.model(i, None).phases) for i in ids)
    assert len(strips) == n_a + n_b  # each snapshot's own phases, in its own strip
    assert {round(s.y0, 3) for s in strips} == {1.02, round(1.02 + 0.045, 3)}
    assert "aligned" in fig.layout.xaxis.title.text
    assert fig.data[1].customdata is not None  # hover shows each point's own-clock time


def test_compare_without_shared_phases_lines_up_first_forward(lib) -> None:
    from memprof.dashboard.pages import compare

    import dataclasses

    a, s = lib.model(lib.get(EAGER).id, None), lib.model(lib.get(SCRIPT).id, None)
    # the script's phases are inferred from its stacks now; a snapshot that shares none with the first:
    s = dataclasses.replace(s, phases=s.phases.iloc[0:0])
    curves, phases, how = compare.aligned_curves([a, s], [EAGER, SCRIPT])
    assert how == "first forwards lined up"
    lab, x, y, own = curves[1]
    assert (x - own) == pytest.approx(x[0] - own[0])  # a pure shift


# --- Library ------------------------------------------------------------------

def test_library_latest_by_recording_time_and_real_sizes(tmp_path: Path) -> None:
    import os

    from memprof.dashboard.state import Library

    from memprof.units import fmt_bytes

    # GIVEN an older recording whose file is newer (copied later) and a newer recording with an old file
    for name, created, mtime in (("old-run", "2024-01-01T10:00:00+00:00", 2_000_000_000), ("new-run", "2025-06-01T10:00:00+00:00", 1_000_000_000)):
        shutil.copy(GOLDEN, tmp_path / f"{name}.pickle.gz")
        (tmp_path / f"{name}.meta.json").write_text(json.dumps({"created": created}))
        os.utime(tmp_path / f"{name}.pickle.gz", (mtime, mtime))
    lib = Library(tmp_path)
    assert lib.default_entry().rel == "new-run.pickle.gz"  # type: ignore[union-attr]
    df = lib.table().set_index("name")
    assert df.loc["new-run.pickle.gz", "recorded"] == "2025-06-01 10:00"
    size = (tmp_path / "new-run.pickle.gz").stat().st_size
    assert df.loc["new-run.pickle.gz", "file_size"] == fmt_bytes(size) and not df["file_size"].str.startswith("0 ").any()
    # without metadata, the file's mtime decides
    (tmp_path / "new-run.meta.json").unlink()
    assert Library(tmp_path).default_entry().rel == "old-run.pickle.gz"  # type: ignore[union-attr]


def test_library_filters_have_placeholders_and_long_columns_wrap(lib) -> None:
    from memprof.dashboard.pages import library as page

    tbl = _ids(page.layout())["library-table"]
    assert tbl.filter_options["placeholder_text"]
    widths = {c["if"]["column_id"]: c["maxWidth"] for c in tbl.style_cell_conditional}
    assert {"name", "options"} <= set(widths) and tbl.style_cell["whiteSpace"] == "normal"


# --- Timeline -----------------------------------------------------------------

def test_timeline_phase_labels_full_and_peak_label_clear(lib) -> None:
    sid = lib.get(EAGER).id
    from memprof.dashboard import common

    fig, rows = common.timeline_figure(sid, None)
    m = lib.model(sid, None)
    texts = [a.text for a in fig.layout.annotations]
    assert "forward 0" in texts and "backward 2" in texts and "optimizer 1" in texts
    assert not any(t in ("for0", "bac0", "opt0") for t in texts)
    # neighbouring labels alternate rows
    shifts = [a.yshift for a in sorted((a for a in fig.layout.annotations if a.yref == "paper"), key=lambda a: a.x)]
    assert all(a != b for a, b in zip(shifts, shifts[1:]))
    # the peak label: an arrow to the peak, placed below-left (the reserved line runs at or above the peak)
    peak = next(a for a in fig.layout.annotations if str(a.text).startswith("peak "))
    assert peak.x == m.peak_ms and peak.showarrow and peak.ay > 0 and peak.bgcolor
    assert not any(getattr(t, "text", None) for t in fig.data if t.name == "peak")


def test_timeline_clicked_block_is_highlighted(lib) -> None:
    from dash import Patch
    from dash.exceptions import PreventUpdate

    from memprof.dashboard import common
    from memprof.dashboard.pages import timeline

    sid = lib.get(EAGER).id
    fig, rows = common.timeline_figure(sid, None)
    blocks = [i for i, r in enumerate(rows) if r >= 0]
    a, b = blocks[0], blocks[3]
    patch, cur = timeline.highlight({"points": [{"curveNumber": a}]}, rows, None)
    ops = patch.to_plotly_json()["operations"]
    assert cur == a and [op["location"] for op in ops] == [["data", a, "line"]]
    assert ops[0]["params"]["value"]["width"] > fig.data[a].line.width
    # a second click moves the outline: the first block gets its own line back
    patch, cur = timeline.highlight({"points": [{"curveNumber": b}]}, rows, a)
    ops = {tuple(op["location"]): op["params"]["value"] for op in patch.to_plotly_json()["operations"]}
    assert cur == b and ops[("data", a, "line")] == {"width": fig.data[a].line.width, "color": fig.data[a].line.color}
    assert isinstance(patch, Patch)
    with pytest.raises(PreventUpdate):  # the allocated curve is not a block
        timeline.highlight({"points": [{"curveNumber": rows.index(-1)}]}, rows, None)


def test_stack_paths_wrap_in_the_side_panel() -> None:
    css = (Path(__file__).resolve().parents[2] / "memprof" / "dashboard" / "assets" / "style.css").read_text()
    rule = re.search(r"\.side pre \{([^}]*)\}", css)
    assert rule and "overflow-wrap: anywhere" in rule.group(1)


# --- Flame graph --------------------------------------------------------------

def test_flame_tree_sums_the_bytes_alive_at_the_peak(lib) -> None:
    from memprof.present import flame, views

    m = lib.model(lib.get(EAGER).id, None)
    alive = views.alive_at(m, m.peak_ms)
    tree = flame.call_tree(m, alive)
    root = tree.iloc[0]
    assert root["id"] == flame.ROOT_ID and root["bytes"] == m.peak_bytes == int(alive["size"].sum())
    # every node: its bytes = what was allocated in it + its children's bytes
    kids = tree.groupby("parent")["bytes"].sum()
    for r in tree.itertuples(index=False):
        assert r.bytes == r.self_bytes + int(kids.get(r.id, 0)), r.id
    # independently, in plain Python: bytes under each outermost frame, from the recorded stacks
    want: dict[str, int] = {}
    for sid, size, idx in zip(alive["stack_id"], alive["size"], alive["alloc_idx"]):
        fr = [f for f in m.snap.stack(int(sid)) if not flame.is_harness(f[0])] if idx >= 0 else []
        top = flame.frame_label(*fr[-1]) if fr else ("<allocated before recording started>" if idx < 0 else
                                                     "<no Python frames: autograd engine thread or C++>")
        want[top] = want.get(top, 0) + int(size)
    got = dict(zip(tree.loc[tree["depth"] == 1, "label"], tree.loc[tree["depth"] == 1, "bytes"]))
    assert got == want
    assert not any("runpy" in lab or "record.py" in lab for lab in tree["label"])
    # folded: no Module._call_impl chains, the same bytes under the same outermost user frames, a shallower tree
    folded = flame.call_tree(m, alive, fold_library=True)
    assert folded.iloc[0]["bytes"] == root["bytes"] and folded["depth"].max() < tree["depth"].max()
    assert not folded[folded["depth"] > 0]["label"].str.startswith("_call_impl (module.py").any()
    kids = folded.groupby("parent")["bytes"].sum()
    assert all(r.bytes == r.self_bytes + int(kids.get(r.id, 0)) for r in folded.itertuples(index=False))


def test_flame_page_and_callback(lib) -> None:
    from memprof.dashboard.pages import flame as page

    sid = lib.get(EAGER).id
    ids = _ids(page.layout(snap=str(sid)))
    fig = ids["flame-graph"].figure
    assert fig.data[0].type == "icicle" and fig.data[0].branchvalues == "total"
    m = lib.model(sid, None)
    assert int(fig.data[0].values[0]) == m.peak_bytes
    fig2, summary = page.update(0.0, "", ["fold"], {"snap": sid, "device": None})
    assert "alive at 0.000 ms" in summary and int(fig2.data[0].values[0]) < m.peak_bytes


def test_flame_search_by_stack_frame(lib) -> None:
    from memprof.dashboard.pages import flame as page

    from memprof.present import views

    sid = lib.get(EAGER).id
    m = lib.model(sid, None)
    fig, summary = page.update(None, "transformer.py:90", ["fold"], {"snap": sid, "device": None})
    # independently: the allocations alive at the peak whose recorded stack has transformer.py line 90
    alive = views.alive_at(m, m.peak_ms)
    want = sum(int(sz) for sid_, sz in zip(alive["stack_id"], alive["size"])
               if any(f.endswith("transformer.py") and ln == 90 for f, ln, _ in m.snap.stack(int(sid_))))
    assert want > 0 and int(fig.data[0].values[0]) == want
    assert "matching 'transformer.py:90'" in summary
    fig0, _ = page.update(None, "no-such-frame-anywhere", [], {"snap": sid, "device": None})
    assert int(fig0.data[0].values[0]) == 0


def test_allocations_stream_and_address_search(lib) -> None:
    from memprof.dashboard.pages import allocations

    sid = lib.get(EAGER).id
    m = lib.model(sid, None)
    key = {"snap": sid, "device": None}
    rows, _, _ = allocations.page(0, 5, [{"column_id": "size", "direction": "desc"}], "", key)
    assert all("stream" in r and r["addr"].startswith("0x") for r in rows)
    addr = rows[0]["addr"]
    found, _, count = allocations.page(0, 500, None, "{addr} contains " + addr[2:], key)
    # independently: allocations at that address in the replay
    want = int((m.allocs["addr"] == int(addr, 16)).sum())
    assert want >= 1 and int(count.split()[0].replace(",", "")) == want and all(r["addr"] == addr for r in found)


def test_device_selector_for_multi_device_snapshots(tmp_path: Path) -> None:
    from memprof.dashboard import common, create_app

    import gzip
    import pickle

    from memprof.snapshot.read import read_raw

    # GIVEN a snapshot with two devices' traces (the golden one's trace on device 0, a shorter one on 1)
    raw, _ = read_raw(GOLDEN)
    raw["device_traces"] = [raw["device_traces"][0], raw["device_traces"][0][:4]]
    with gzip.open(tmp_path / "two.pickle.gz", "wb") as f:
        pickle.dump(raw, f, protocol=4)
    try:
        create_app(tmp_path)
        links = _ids(common.device_links(0, None))
        assert "device-select" in links and links["device-current"].children.startswith("0 ")
        other = [c for c in _walk(common.device_links(0, None)) if getattr(c, "href", None)]
        assert [c.href for c in other] == ["?snap=0&device=1"]
        assert common.device_links(0, 1)[0].children[1].href == "?snap=0&device=0"
    finally:
        create_app(ROOT)
    assert common.device_links(0, None) == []  # one device: no selector


# --- Allocator state ----------------------------------------------------------

def test_allocator_page_steps_through_events(lib) -> None:
    from memprof.dashboard.pages import allocator

    sid = lib.get(EAGER).id
    m = lib.model(sid, None)
    key = {"snap": sid, "device": None}
    ids = _ids(allocator.layout(snap=str(sid)))
    assert ids["allocator-event"].value == m.rep.peak_idx
    assert ids["allocator-event-line"].children.startswith(f"event {m.rep.peak_idx:,}: ")
    fig = ids["allocator-graph"].figure
    assert {t.name for t in fig.data} >= {"free (cached)"} and len(fig.data) >= 2
    # the buttons: previous / next by one, peak jumps back; the ends are clamped
    assert allocator.step("allocator-next", 10, key) == 11 and allocator.step("allocator-prev", 10, key) == 9
    assert allocator.step("allocator-prev", -1, key) == -1 and allocator.step("allocator-next", m.rep.n_events - 1, key) == m.rep.n_events - 1
    assert allocator.step("allocator-peak", 3, key) == m.rep.peak_idx
    fig2, line, rows, totals = allocator.show(0, key)
    assert line.startswith("event 0: ") and rows and "reserved" in totals
    from memprof.units import fmt_bytes
    assert f"{fmt_bytes(int(m.rep.reserved['reserved'].max()))} reserved" in totals or "reserved" in totals


def test_allocator_segment_timeline_click_and_line(lib) -> None:
    import numpy as np

    from memprof.dashboard.pages import allocator

    sid = lib.get(OOM).id
    m = lib.model(sid, None)
    key = {"snap": sid, "device": None}
    fig = allocator.segment_timeline(key, m.rep.peak_idx)
    lt = allocator.lifetimes(sid, None)
    assert len(fig.data[0].y) == len(lt)
    t = allocator.event_times_ms(m)
    # a click at an event's time selects that event (the last one at or before it)
    k = m.rep.n_events // 2
    assert allocator.step("allocator-timeline", 0, key, {"points": [{"x": float(t[k]) + 1e-9}]}) == int(np.searchsorted(t, t[k], side="right") - 1)
    ops = allocator.move_line(k, key).to_plotly_json()["operations"]
    assert {tuple(o["location"]) for o in ops} == {("layout", "shapes", 0, "x0"), ("layout", "shapes", 0, "x1")}
    assert all(o["params"]["value"] == pytest.approx(float(t[k])) for o in ops)


def test_timeline_detail_control_draws_more_allocations(lib) -> None:
    from memprof.dashboard import common
    from memprof.dashboard.pages import timeline

    sid = lib.get(EAGER).id
    m = lib.model(sid, None)
    ids = _ids(timeline.layout(snap=str(sid)))
    assert [o["value"] for o in ids["timeline-detail"].options] == list(common.DETAIL_LEVELS)
    key = {"snap": sid, "device": None}
    patch, rows, key2 = timeline.detail(1000, None, key)
    assert key2["k"] == 1000 and sum(r >= 0 for r in rows) == 1000
    traces = patch.to_plotly_json()["operations"][0]["params"]["value"]
    assert len(traces) == len(rows)
    # the blocks are the 1,000 largest allocations alive in the window
    drawn = sorted(m.allocs["size"].to_numpy()[[r for r in rows if r >= 0]])
    assert drawn[0] >= sorted(m.allocs["size"].to_numpy())[-1000]
    # a zoom keeps the detail level
    p2, rows2 = timeline.zoom({"xaxis.range[0]": 0.0, "xaxis.range[1]": m.peak_ms}, key2)
    assert sum(r >= 0 for r in rows2) > 80
    # the script snapshot has fewer allocations than the top level: "all N"
    s = lib.get(SCRIPT).id
    opts = _ids(timeline.layout(snap=str(s)))["timeline-detail"].options
    n = len(lib.model(s, None).allocs)
    assert opts[-1]["label"] == (f"all {n:,}" if n <= common.DETAIL_LEVELS[-1] else f"{common.DETAIL_LEVELS[-1]:,} largest")


def test_stack_panel_folds_library_frames(lib) -> None:
    from memprof.dashboard.pages import timeline

    frames = [("/x/site-packages/torch/nn/functional.py", 10, "linear"), ("/home/u/model.py", 5, "forward"),
              ("/x/site-packages/torch/nn/modules/module.py", 1790, "_call_impl"),
              ("/x/site-packages/torch/nn/modules/module.py", 1779, "_wrapped_call_impl"),
              ("/home/u/train.py", 20, "main"), ("/x/site-packages/torch/autograd/__init__.py", 1, "backward")]
    text = timeline.folded_stack(frames).splitlines()
    assert text == ["linear  /x/site-packages/torch/nn/functional.py:10", "forward  /home/u/model.py:5",
                    "  ⋯ 2 library frames (module.py)", "main  /home/u/train.py:20",
                    "backward  /x/site-packages/torch/autograd/__init__.py:1"]


def test_oom_run_verdict_does_not_ask_to_re_record(lib) -> None:
    from memprof.present import views

    v = views.verdict(lib.model(lib.get(OOM).id, None))
    assert v["verdict"] == "inconclusive"
    assert not any("Record with `memprof record`" in r for r in v["remedies"])
    assert any("ran out of memory" in r for r in v["remedies"])
