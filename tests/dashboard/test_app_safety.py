"""The dashboard as a server facing untrusted files and requests: no leak through symlinks,
no HTTP 500 from crafted callback inputs, bounded single-flight caches, a warning off loopback."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("dash")

from memprof.errors import MemprofError  # noqa: E402

SNAPS = Path(__file__).resolve().parents[2] / "snapshots"
TINY = SNAPS / "h100" / "script-train_tiny.pickle.gz"
EAGER = SNAPS / "h100" / "transformer-small-train-eager-bf16.pickle.gz"
SECRET = "SECRET-do-not-show"


@pytest.fixture
def served(tmp_path: Path):
    """A served folder (two snapshots with metadata, a sweep) and an outside folder with secrets."""
    outside = tmp_path / "outside"
    outside.mkdir()
    meta = json.loads((SNAPS / "h100" / "script-train_tiny.meta.json").read_text())
    secret_meta = dict(meta, workload={"kind": SECRET, "secret": SECRET}, device={"name": SECRET}, status=SECRET)
    (outside / "secret.meta.json").write_text(json.dumps(secret_meta))
    shutil.copy(SNAPS / "h100" / "attention-naive-s4096-d64-b8-fwdbwd-fp32.pickle.gz", outside / "secret.pickle.gz")
    (outside / "results.csv").write_text(f"seq_len,status,impl\n1,{SECRET},{SECRET}\n")
    root = tmp_path / "served"
    (root / "runs").mkdir(parents=True)
    shutil.copy(TINY, root / "runs" / "a.pickle.gz")
    shutil.copy(SNAPS / "h100" / "script-train_tiny.meta.json", root / "runs" / "a.meta.json")
    shutil.copy(TINY, root / "runs" / "b.pickle.gz")
    os.symlink(outside / "secret.meta.json", root / "runs" / "b.meta.json")  # the leak of issue 10
    (root / "sweep").mkdir()
    shutil.copy(SNAPS / "sweep-attention-h100" / "results.csv", root / "sweep" / "results.csv")
    from memprof.dashboard import create_app

    app = create_app(root)
    yield app, root, outside
    create_app(SNAPS)


def _text(x: Any) -> str:
    import plotly

    return json.dumps(x, cls=plotly.utils.PlotlyJSONEncoder)


def test_meta_symlink_outside_is_never_read(served) -> None:
    from memprof.dashboard.pages import explain, library as library_page, timeline
    from memprof.dashboard.state import library

    _, root, _ = served
    lib = library()
    # GIVEN b.meta.json is a symlink to a file outside the served folder
    assert [e.rel for e in lib.entries()] == ["runs/a.pickle.gz", "runs/b.pickle.gz"]
    b = lib.get("runs/b.pickle.gz")
    # THEN its values appear nowhere: not in the Library table, the model, or any page
    assert SECRET not in lib.table().to_csv()
    assert lib.meta(b) == {}
    assert lib.meta(lib.get("runs/a.pickle.gz"))["workload"]  # a regular meta file is still read
    assert lib.model(b.id).meta == {}
    for page in (library_page.layout(), timeline.layout(snap=str(b.id)), explain.layout(snap=str(b.id))):
        assert SECRET not in _text(page)


def test_snapshot_replaced_by_symlink_after_startup_is_refused(served) -> None:
    from memprof.dashboard.pages import allocations, timeline
    from memprof.dashboard.state import library

    app, root, outside = served
    lib = library()
    a = lib.get("runs/a.pickle.gz")
    lib.model(a.id)  # opened once, cached
    # WHEN the file is replaced by a symlink that leads out of the folder
    target = root / "runs" / "a.pickle.gz"
    target.unlink()
    os.symlink(outside / "secret.pickle.gz", target)
    # THEN every open refuses it, cached or not, and the message names it relative to the folder
    with pytest.raises(MemprofError, match="outside the served folder"):
        lib.get(a.id)
    with pytest.raises(MemprofError, match="outside the served folder"):
        lib.model(a.id)
    page = _text(timeline.layout(snap=str(a.id)))
    assert "runs/a.pickle.gz: leads outside the served folder" in page
    assert str(root) not in page and str(outside) not in page
    out = _text(allocations.layout(snap=str(a.id)))
    assert "leads outside" in out
    # the same over HTTP: an error box and a 200
    r = _post(app.server.test_client(), _router_body("/timeline", f"?snap={a.id}"))
    assert r.status_code == 200 and b"leads outside the served folder" in r.data and str(root).encode() not in r.data
    # a symlink to a file inside the folder is still a file inside the folder
    target.unlink()
    os.symlink(root / "runs" / "b.pickle.gz", target)
    assert lib.model(a.id).allocs is not None


def test_swap_while_reading_is_refused_and_a_new_file_is_reread(served, monkeypatch) -> None:
    from memprof.dashboard import common, state
    from memprof.dashboard.state import library

    _, root, outside = served
    lib = library()
    a = lib.get("runs/a.pickle.gz")
    fig_a, _ = common.timeline_figure(a.id, None)
    target = root / "runs" / "a.pickle.gz"
    real_make = state._make_model

    def swapping_make(*args: Any, **kw: Any) -> Any:
        m = real_make(*args, **kw)
        target.unlink()  # the file is replaced while the server reads it
        shutil.copy(outside / "secret.pickle.gz", target)
        return m

    monkeypatch.setattr(state, "_make_model", swapping_make)
    with pytest.raises(MemprofError, match="changed while it was being read"):
        lib.model(a.id, 0)  # a device not cached yet: a build
    monkeypatch.setattr(state, "_make_model", real_make)
    # the replacement is a regular file inside the folder: it is read afresh, not served from the caches
    m_new = lib.model(a.id)
    fig_new, _ = common.timeline_figure(a.id, None)
    assert m_new.peak_bytes != lib.model(lib.get("runs/b.pickle.gz").id).peak_bytes
    assert fig_new is not fig_a


def test_fifo_and_folder_in_place_of_files_are_refused(served) -> None:
    from memprof.dashboard.state import library

    _, root, _ = served
    lib = library()
    a = lib.get("runs/a.pickle.gz")
    meta = root / "runs" / "a.meta.json"
    meta.unlink()
    os.mkfifo(meta)  # reading a FIFO would block the server forever
    t = time.perf_counter()
    assert lib.meta(a) == {}
    assert time.perf_counter() - t < 1
    snap = root / "runs" / "a.pickle.gz"
    snap.unlink()
    snap.mkdir()
    with pytest.raises(MemprofError, match="not a regular file"):
        lib.model(a.id)


def test_sweep_results_symlink_is_refused(served) -> None:
    from memprof.dashboard.pages import sweeps
    from memprof.dashboard.state import library

    _, root, outside = served
    lib = library()
    assert [rel for _, rel, _ in lib.sweeps()] == ["sweep"]
    csv = root / "sweep" / "results.csv"
    csv.unlink()
    os.symlink(outside / "results.csv", csv)
    assert lib.sweeps() == []
    with pytest.raises(MemprofError, match="outside the served folder"):
        lib.read_csv(csv)
    assert SECRET not in _text(sweeps.update(0))


def test_run_folder_files_leading_outside_are_refused(served) -> None:
    from memprof.dashboard.pages import ranks
    from memprof.dashboard.state import library

    _, root, outside = served
    run_src = Path(__file__).resolve().parents[1] / "data" / "gpu" / "ranks" / "transformer-small-fsdp-n2"
    run = root / "run"
    shutil.copytree(run_src, run)
    lib = library()
    lib.entries(rescan=True)
    assert "2 ranks" in _text(ranks.content("run"))  # a regular run folder is served
    # a rank's metadata (read by the run summaries) replaced by a symlink out of the folder
    (run / "rank1.meta.json").unlink()
    os.symlink(outside / "secret.meta.json", run / "rank1.meta.json")
    (run / "rank1.summary").unlink()  # so the summary would be recomputed from that metadata
    with pytest.raises(MemprofError, match="run/rank1.meta.json: leads outside the served folder"):
        ranks.content("run")
    assert SECRET not in _text(ranks.layout(run="run"))
    # a rank snapshot itself replaced by a symlink out of the folder
    (run / "rank1.meta.json").unlink()
    (run / "rank0.pickle.gz").unlink()
    os.symlink(outside / "secret.pickle.gz", run / "rank0.pickle.gz")
    with pytest.raises(MemprofError, match="run/rank0.pickle.gz: leads outside the served folder"):
        ranks.content("run")


def test_error_boxes_show_relative_paths(served) -> None:
    from memprof.dashboard.pages import explain, timeline
    from memprof.dashboard.state import library

    _, root, _ = served
    (root / "runs" / "broken.pickle.gz").write_bytes(b"\x1f\x8b not really gzip")
    lib = library()
    lib.entries(rescan=True)
    e = lib.get("runs/broken.pickle.gz")
    for page in (timeline.layout(snap=str(e.id)), explain.layout(snap=str(e.id))):
        text = _text(page)
        assert "memprof: runs/broken.pickle.gz" in text, text[:300]
        assert str(root) not in text and str(root.resolve()) not in text


# --- crafted requests to every callback ----------------------------------------------------------

HOSTILE: list[Any] = [
    None, "", "²", "1" * 5000, -1, 10**30, 1e308, True, float("nan"), float("inf"),
    [1, 2], [[[]]], [None], {"a": 1}, {"snap": "../../etc/passwd"}, "../../../etc/passwd", "/etc/passwd",
    "runs/a.meta.json", "x" * 20_000, {"points": "x"}, {"points": [1]}, {"points": []},
    {"points": [{"x": "a", "customdata": "b", "curveNumber": "c"}]}, {"points": [{"x": 1e308, "customdata": 10**20, "curveNumber": -5}]},
    [{"column_id": 5, "direction": "up"}], [{"column_id": "nope", "direction": "asc"}], [{"column_id": ["size"]}],
    "{size} =" + " " * 80_000, " && ".join(["{size} > 1"] * 10_000), "{size} > 50 MiB", "{category} scontains activation",
    {"xaxis.range[0]": "a", "xaxis.range[1]": None}, {"xaxis.range": "ab"}, {"xaxis.range": [1e308, -1e308]},
    {"xaxis.range[0]": -1e300, "xaxis.range[1]": 1e300}, {"xaxis.autorange": [1]},
]
KEYS: list[Any] = [{"snap": s, "device": d} for s in (0, "²", "1" * 5000, [0], {"a": 1}, "runs/../../x", True, 99, -1, 1.5, None)
                   for d in (None, [0], {"a": 1}, "²", "1" * 5000, -1, 1.5, 7)]
SEARCHES = ["", "?snap=²", "?snap=" + "9" * 5000, "?snap=../../etc/passwd", "?snap=/etc/passwd", "?device=[1]", "?device=²",
            "?snap=0&snap=1", "?snap=0&device=" + "1" * 5000, "?t=nan", "?t=1e999", "?t=abc", "?sweep=²", "?sweep=" + "7" * 5000,
            "?snaps=²,0", "?snaps=" + ",".join(["0"] * 1000), "?snap=runs/a.meta.json", "?snap=%00", "?snap=0&t=-inf"]


def _base(id_: str, prop: str) -> Any:
    """A plausible value for an input, so that one crafted slot at a time is the only wrong one."""
    table = {
        ("_pages_location", "pathname"): "/allocations", ("_pages_location", "search"): "?snap=0",
        ("allocations-table", "page_current"): 0, ("allocations-table", "page_size"): 20,
        ("allocations-table", "sort_by"): [{"column_id": "size", "direction": "desc"}], ("allocations-table", "filter_query"): "",
        ("allocations-time", "value"): 1.0, ("allocations-slider", "value"): 1.0, ("allocations-export", "n_clicks"): 1,
        ("timeline-graph", "relayoutData"): {"xaxis.range[0]": 0, "xaxis.range[1]": 1},
        ("timeline-graph", "clickData"): {"points": [{"x": 1.0, "customdata": 0, "curveNumber": 0}]},
        ("timeline-rows", "data"): [0, 1], ("compare-select", "value"): [0, 1], ("sweeps-select", "value"): 0,
        ("library-table", "derived_virtual_data"): [{"id": 0}, {"id": 1}], ("library-table", "derived_virtual_selected_rows"): [0, 1],
    }
    if (id_, prop) in table:
        return table[(id_, prop)]
    if prop == "data" and id_.endswith("-key"):
        return {"snap": 0, "device": None}
    if prop == "n_clicks":
        return 1
    return None


def _split_outputs(output: str) -> list[dict[str, str]]:
    parts = output.strip(".").split("...") if output.startswith("..") else [output]
    return [dict(zip(("id", "property"), p.rsplit(".", 1))) for p in parts]


def _body(output: str, slots: list[dict[str, str]], n_inputs: int, values: list[Any]) -> dict[str, Any]:
    outs = _split_outputs(output)
    vals = [dict(s, value=v) for s, v in zip(slots, values)]
    return {"output": output, "outputs": outs if output.startswith("..") else outs[0],
            "inputs": vals[:n_inputs], "state": vals[n_inputs:],
            "changedPropIds": [f"{s['id']}.{s['property']}" for s in slots[:n_inputs]]}


def _router_body(path: str, search: Any) -> dict[str, Any]:
    out = ".._pages_content.children..._pages_store.data.."
    slots = [{"id": "_pages_location", "property": "pathname"}, {"id": "_pages_location", "property": "search"}]
    return _body(out, slots, 2, [path, search])


def _post(client: Any, body: dict[str, Any]) -> Any:
    return client.post("/_dash-update-component", data=json.dumps(body), content_type="application/json")


def _server_callbacks(app: Any) -> list[tuple[str, list[dict[str, str]], int]]:
    """Every server-side callback of the app, from its callback map (so new pages are covered)."""
    client = app.server.test_client()
    assert client.get("/_dash-dependencies").status_code == 200  # registers the pages' callbacks
    out = []
    for output, cb in app.callback_map.items():
        if not callable(cb.get("callback")):
            continue  # clientside
        slots = [{"id": str(x["id"]), "property": x["property"]} for x in cb["inputs"] + cb["state"]]
        out.append((output, slots, len(cb["inputs"])))
    return out


def test_crafted_requests_to_every_callback_never_give_500(served) -> None:
    app, root, outside = served
    client = app.server.test_client()
    callbacks = _server_callbacks(app)
    covered = {o for o, _, _ in callbacks}
    # every page's callbacks are in the map (a new page's will be too)
    assert any("allocations-table.data" in o for o in covered) and any("timeline-stack" in o for o in covered)
    assert any("_pages_content" in o for o in covered) and any("sweeps-body" in o for o in covered)
    import dash

    dash_dir = os.path.dirname(dash.__file__).encode()  # the server's own code (snapshot stacks may name other packages)
    failures: list[str] = []
    n = 0
    slow = 0.0
    for output, slots, n_in in callbacks:
        base = [_base(s["id"], s["property"]) for s in slots]
        cases = [base] + [base[:i] + [h] + base[i + 1:] for i in range(len(slots)) for h in HOSTILE]
        cases += [[h] * len(slots) for h in HOSTILE]
        key_slots = [i for i, s in enumerate(slots) if s["property"] == "data" and s["id"].endswith("-key")]
        cases += [base[:i] + [k] + base[i + 1:] for i in key_slots for k in KEYS]
        if output.startswith(".._pages_content"):
            cases += [[path, s] for path in ("/", "/timeline", "/allocations", "/explain", "/compare", "/sweeps", "/nope")
                      for s in SEARCHES]
        for vals in cases:
            t = time.perf_counter()
            r = _post(client, _body(output, slots, n_in, vals))
            slow = max(slow, time.perf_counter() - t)
            n += 1
            if r.status_code not in (200, 204):
                failures.append(f"{r.status_code} {output} {str(vals)[:160]}")
            elif any(x in r.data for x in (str(root).encode(), str(outside).encode(), SECRET.encode(), dash_dir, b"Traceback")):
                failures.append(f"absolute path, traceback or secret in {output} {str(vals)[:160]}")
    assert n > 800
    assert not failures, f"{len(failures)} of {n} crafted requests failed:\n" + "\n".join(failures[:20])
    assert slow < 5, slow


def test_malformed_callback_requests_are_400_not_500(served) -> None:
    app, _, _ = served
    client = app.server.test_client()
    cbs = {o: (s, n) for o, s, n in _server_callbacks(app)}
    out = next(o for o in cbs if "allocations-table.data" in o)
    slots, n_in = cbs[out]
    good = _body(out, slots, n_in, [_base(s["id"], s["property"]) for s in slots])
    assert _post(client, good).status_code == 200
    bad: list[Any] = ["not json", [], {}, 5, dict(good, output="nope.children"), dict(good, output=["x"]), dict(good, inputs="x"),
                      dict(good, inputs=good["inputs"][:1]), dict(good, state=[{"value": 1}]), dict(good, inputs=[{"id": "a"}] * n_in),
                      dict(good, outputs=[]), dict(good, outputs=5), dict(good, outputs={"id": "x", "property": "y"}),
                      dict(good, changedPropIds=5), dict(good, changedPropIds=[{"a": 1}])]
    for b in bad:
        data = b if isinstance(b, str) else json.dumps(b)
        r = client.post("/_dash-update-component", data=data, content_type="application/json")
        assert r.status_code == 400, (r.status_code, str(b)[:100])
        assert r.get_json()["error"].startswith("memprof: malformed callback request")


def test_wrong_typed_inputs_show_the_error_box(served) -> None:
    app, _, _ = served
    client = app.server.test_client()
    cbs = {o: (s, n) for o, s, n in _server_callbacks(app)}
    out = next(o for o in cbs if "allocations-table.data" in o)
    slots, n_in = cbs[out]
    vals = [_base(s["id"], s["property"]) for s in slots]
    vals[-1] = {"snap": "1" * 5000, "device": None}
    r = _post(client, _body(out, slots, n_in, vals))
    assert r.status_code == 200
    resp = r.get_json()["response"]
    assert "error" in json.dumps(resp["allocations-count"]) and "no such snapshot" in json.dumps(resp)
    # an output without children (a figure): the error box goes above the page
    out = next(o for o in cbs if "timeline-graph.figure" in o)
    slots, n_in = cbs[out]
    r = _post(client, _body(out, slots, n_in, [{"xaxis.range[0]": 0, "xaxis.range[1]": 1}, {"snap": 0, "device": [0]}]))
    assert r.status_code == 200
    body = r.get_json()
    assert "device must be an integer" in json.dumps(body.get("sideUpdate", {}).get("app-error", {})), body


def test_hostile_filter_over_http_answers_quickly(served) -> None:
    app, _, _ = served
    client = app.server.test_client()
    cbs = {o: (s, n) for o, s, n in _server_callbacks(app)}
    out = next(o for o in cbs if "allocations-table.data" in o)
    slots, n_in = cbs[out]
    for q in ("{size} =" + " " * 80_000, " && ".join(["{size} > 1"] * 10_000)):
        vals = [0, 20, None, q, {"snap": 0, "device": None}]
        t = time.perf_counter()
        r = _post(client, _body(out, slots, n_in, vals))
        assert time.perf_counter() - t < 0.5
        assert r.status_code == 200 and b"too long" in r.data


# --- caches ----------------------------------------------------------------------------------------

def test_single_flight_one_build_per_key() -> None:
    from memprof.dashboard.state import ByteLRU

    cache = ByteLRU(10**9, sizeof=lambda v: 8)
    calls: list[int] = []
    gate = threading.Event()

    def make() -> object:
        calls.append(1)
        gate.wait(5)
        return object()

    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(cache.get_or_make("k", make))) for _ in range(20)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    gate.set()
    for t in threads:
        t.join(10)
    assert len(calls) == 1 and cache.n_builds == 1
    assert len(got) == 20 and all(g is got[0] for g in got)


def test_single_flight_error_reaches_waiters_and_is_not_cached() -> None:
    from memprof.dashboard.state import ByteLRU

    cache = ByteLRU(10**9, sizeof=lambda v: 8)
    gate = threading.Event()

    def boom() -> object:
        gate.wait(5)
        raise MemprofError("broken file")

    errors: list[str] = []

    def call() -> None:
        try:
            cache.get_or_make("k", boom)
        except MemprofError as e:
            errors.append(str(e))

    threads = [threading.Thread(target=call) for _ in range(5)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    gate.set()
    for t in threads:
        t.join(10)
    assert errors == ["broken file"] * 5 and cache.n_builds == 1
    assert cache.get_or_make("k", lambda: "ok") == "ok"  # the next request tries again


def test_cache_bounded_by_bytes() -> None:
    from memprof.dashboard.state import ByteLRU

    cache = ByteLRU(1000, sizeof=len)
    for k in "abcde":
        cache.get_or_make(k, lambda k=k: k * 400)
    assert len(cache) == 2 and cache.total == 800  # the two newest
    cache.get_or_make("d", lambda: "never")  # a hit refreshes d
    cache.get_or_make("f", lambda: "f" * 400)
    assert cache.get_or_make("d", lambda: "rebuilt") == "d" * 400
    cache.get_or_make("huge", lambda: "h" * 5000)  # alone above the bound: kept (the page needs it), others go
    assert len(cache) == 1 and cache.total == 5000


def test_library_model_single_flight(served) -> None:
    from memprof.dashboard.state import library

    lib = library()
    e = lib.get("runs/a.pickle.gz")
    models: list[Any] = []
    threads = [threading.Thread(target=lambda: models.append(lib.model(e.id, None))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(models) == 8 and all(m is models[0] for m in models)
    assert lib.models.n_builds == 1
    assert 0 < lib.models.total < 200 * 2**20


def test_approx_nbytes_counts_arrays() -> None:
    import numpy as np
    import pandas as pd

    from memprof.dashboard.state import approx_nbytes

    a = np.zeros(1_000_000)
    assert 8_000_000 <= approx_nbytes(a) < 8_100_000
    df = pd.DataFrame({"x": a, "y": a.astype(np.int32)})
    assert 12_000_000 <= approx_nbytes(df) < 12_100_000
    assert approx_nbytes({"k": [a, a]}) >= 16_000_000


# --- serve ------------------------------------------------------------------------------------------

def test_serve_warns_off_loopback(monkeypatch, capsys, tmp_path: Path) -> None:
    import dash

    from memprof.cli import main
    from memprof.commands.serve import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.3.4.5")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("192.168.1.5") and not is_loopback("example.org")
    ran: list[tuple[str, int]] = []
    monkeypatch.setattr(dash.Dash, "run", lambda self, host, port, debug=False, **kw: ran.append((host, port)))
    from memprof.commands import serve

    monkeypatch.setattr(serve, "check_port_free", lambda host, port: None)  # binds nothing beyond loopback in tests
    shutil.copy(TINY, tmp_path / "a.pickle.gz")
    try:
        assert main(["serve", str(tmp_path), "--host", "0.0.0.0", "--port", "8211"]) == 0
        err = capsys.readouterr().err
        assert "warning" in err and "anyone who can reach port 8211" in err and "every snapshot" in err
        assert main(["serve", str(tmp_path), "--port", "8212"]) == 0
        assert "warning" not in capsys.readouterr().err
        assert ran == [("0.0.0.0", 8211), ("127.0.0.1", 8212)]
    finally:
        from memprof.dashboard import create_app

        create_app(SNAPS)
