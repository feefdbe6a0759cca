"""Runs of many ranks: recording under torchrun (CPU, gloo), run folders, summaries, imbalance, CLI.

The torchrun tests launch real DDP training on CPU with the gloo backend, 2 ranks with different
batch sizes, recorded in both torchrun forms; figures are checked against an independent
line-by-line port of PyTorch's viewer over each rank's snapshot dict (``test_replay``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from memprof.cli import main
from memprof.snapshot.read import read_raw
from memprof.snapshot.meta import read_meta
from memprof.analysis.ranks import aligned_x, imbalance, load_summaries, max_by_category, read_summary
from memprof.snapshot.runs import is_run, rank_files, rank_path, summary_path
from memprof.testing import write_run
from viewer import viewer_reference

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
SCRIPT = str(REPO / "examples" / "ddp_train.py")
GPU_RUNS = REPO / "tests" / "data" / "gpu" / "ranks"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def _cli_json(capsys, *argv: str) -> dict:
    capsys.readouterr()
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def _viewer_peak(path: Path) -> int:
    """The peak by an independent port of PyTorch's viewer, on the device with most entries."""
    raw, _ = read_raw(path)
    dev = max(range(len(raw["device_traces"])), key=lambda d: len(raw["device_traces"][d]))
    return viewer_reference(raw, dev)[0]


# -- the folder and the rank environment ----------------------------------------------------------
def test_rank_path_puts_every_rank_in_one_folder():
    # GIVEN / WHEN / THEN
    assert rank_path("out.pickle.gz", 3) == Path("out/rank3.pickle.gz")
    assert rank_path("a/out.pickle", 0) == Path("a/out/rank0.pickle")
    assert rank_path("a/run", 12) == Path("a/run/rank12.pickle.gz")
    assert rank_path("run.json", 1) == Path("run/rank1.pickle.gz")
    assert rank_path("run.pickle", 1, compress=True) == Path("run/rank1.pickle.gz")


def test_output_path_in_a_worker_and_outside(monkeypatch):
    from memprof.recorder import dist

    monkeypatch.delenv("RANK", raising=False)
    assert dist.output_path("x.pickle") == Path("x.pickle")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert dist.output_path("x.pickle") == Path("x/rank1.pickle")
    assert dist.output_path("x/rank1.pickle") == Path("x/rank1.pickle")  # already this rank's file: kept
    info = dist.rank_env()
    assert info is not None and (info["rank"], info["local_rank"], info["world_size"]) == (1, 1, 2)


def test_a_window_that_records_nothing_is_never_ok(tmp_path):
    import memprof

    # GIVEN a window in which nothing is allocated
    with memprof.record(tmp_path / "idle.pickle", device="cpu"):
        pass
    # THEN its status says so
    meta = read_meta(tmp_path / "idle.pickle")
    assert meta["status"] == "empty"
    assert "nothing was recorded" in meta["error"]


def test_concurrent_writers_of_one_path_never_leave_a_corrupt_file(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from memprof.snapshot.load import load
    from memprof.recorder.snapshot_io import write_snapshot
    from memprof.testing import training_snapshot

    snaps = [training_snapshot(iterations=1, layers=2, hidden_mb=1, seed=s)[0] for s in range(4)]
    p = tmp_path / "same.pickle.gz"
    with ThreadPoolExecutor(4) as ex:
        list(ex.map(lambda s: write_snapshot(p, s), snaps * 3))
    assert load(p, use_cache=False).n_devices >= 1
    assert [x.name for x in tmp_path.iterdir()] == ["same.pickle.gz"]  # no temporary left behind


# -- summaries and the imbalance -----------------------------------------------------------------
def test_summaries_in_a_pool_match_the_replay_and_the_imbalance_is_right(tmp_path):
    # GIVEN a 3-rank run whose rank 2 is the heaviest and rank 1 the lightest
    run = write_run(tmp_path / "run", [8, 4, 12])
    # WHEN the summaries are computed in a process pool
    sums = load_summaries(run, workers=2)
    # THEN each peak is the viewer's, summaries were written, and the imbalance names the ranks
    for s in sums:
        assert s["peak_allocated_bytes"] == _viewer_peak(run / f"rank{s['rank']}.pickle")
        assert read_summary(run / f"rank{s['rank']}.pickle") == s
    im = imbalance(sums)
    assert (im["heaviest_rank"], im["lightest_rank"]) == (2, 1)
    assert im["ratio"] == pytest.approx(sums[2]["peak_allocated_bytes"] / sums[1]["peak_allocated_bytes"])
    # what the heaviest holds beyond the lightest, from the two summaries by hand
    h, lo = sums[2]["by_category"], sums[1]["by_category"]
    want = {c: h.get(c, 0) - lo.get(c, 0) for c in set(h) | set(lo) if h.get(c, 0) > lo.get(c, 0)}
    assert {c["category"]: c["delta"] for c in im["by_category"]} == want
    assert [c["delta"] for c in im["by_category"]] == sorted(want.values(), reverse=True)
    assert all(s["delta"] > 0 for s in im["by_site"])


def test_stale_summary_is_recomputed_and_missing_ranks_are_reported(tmp_path):
    run = write_run(tmp_path / "run", [4, 4])
    load_summaries(run, workers=1)
    sp = summary_path(run / "rank1.pickle")
    sp.write_text(json.dumps({**json.loads(sp.read_text()), "peak_allocated_bytes": 1}))
    os.utime(run / "rank1.pickle", ns=(1, 1))  # the snapshot changed since: the summary is stale
    meta = read_meta(run / "rank0.pickle")
    meta["dist"]["world_size"] = 3
    from memprof.snapshot.meta import write_meta

    write_meta(run / "rank0.pickle", meta)
    os.remove(summary_path(run / "rank0.pickle"))
    sums = load_summaries(run, workers=1)
    assert sums[1]["peak_allocated_bytes"] == _viewer_peak(run / "rank1.pickle")
    assert sums[2]["status"] == "missing" and sums[2]["peak_allocated_bytes"] is None


def test_max_by_category_is_the_most_alive_at_once():
    import pandas as pd

    # GIVEN a: 10 B from before the window to event 2; b: 5 B events 1..3; c: 7 B from event 3 on
    al = pd.DataFrame({"alloc_idx": [-1, 1, 3], "free_idx": [2, 3, -1], "size": [10, 5, 7], "category": ["x", "x", "x"]})
    # THEN x peaks at 15 (a and b), never 22
    assert max_by_category(al, 5) == {"x": 15}


def test_aligned_x_maps_each_iteration_to_one_unit():
    its = [{"start_us": 10.0, "end_us": 20.0}, {"start_us": 20.0, "end_us": 40.0}]
    x = aligned_x([0, 10, 15, 20, 30, 40, 50], its, 50.0)
    assert list(x) == [-1.0, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0]


def test_cli_on_a_run_folder(tmp_path, capsys):
    run = write_run(tmp_path / "run", [6, 3], gz=True)
    d = _cli_json(capsys, "stats", str(run), "--json")
    assert [r["rank"] for r in d["ranks"]] == [0, 1]
    assert all(set(r) >= {"rank", "peak_allocated_bytes", "peak_reserved_bytes", "peak_time_us", "status"} for r in d["ranks"])
    assert d["ranks"][0]["peak_allocated_bytes"] == _viewer_peak(run / "rank0.pickle.gz")
    assert d["imbalance"]["heaviest_rank"] == 0 and d["imbalance"]["lightest_rank"] == 1
    capsys.readouterr()
    assert main(["explain", str(run)]) == 0
    out = capsys.readouterr().out
    assert "IMBALANCE  rank 0" in out and "--ranks 1 0" in out
    e = _cli_json(capsys, "explain", str(run), "--rank", "1", "--json")
    assert e["peak_bytes"] == _viewer_peak(run / "rank1.pickle.gz")
    diff = _cli_json(capsys, "diff", str(run), "--ranks", "1", "0", "--json")
    assert diff["peak_delta_bytes"] == _viewer_peak(run / "rank0.pickle.gz") - _viewer_peak(run / "rank1.pickle.gz")
    assert main(["diff", str(run), "--ranks", "0", "7"]) == 2
    assert "no snapshot for rank 7" in capsys.readouterr().err
    assert is_run(run) and not is_run(run / "rank0.pickle.gz")


# -- under torchrun, for real (CPU, gloo) ------------------------------------------------------------
def _check_run(run: Path, statuses: tuple[str, ...] = ("ok", "ok")) -> list[dict]:
    files = rank_files(run)
    assert sorted(files) == [0, 1]
    for r, p in files.items():
        meta = read_meta(p)
        assert meta["dist"]["rank"] == r and meta["dist"]["world_size"] == 2 and meta["dist"]["local_rank"] == r
        assert meta["status"] == statuses[r], meta.get("error")
        assert summary_path(p).exists()  # written at dump time
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    sums = load_summaries(run, workers=1)
    for s in sums:
        assert s["peak_allocated_bytes"] == _viewer_peak(files[s["rank"]])
    return sums


def test_torchrun_both_forms_record_every_rank(tmp_path, capsys):
    # GIVEN DDP on 2 CPU ranks, batch 8 on rank 0 and 512 on rank 1
    args = [SCRIPT, "--batch", "8,512", "--steps", "2"]
    # WHEN recorded as `memprof record -- torchrun ...` and as `torchrun -m memprof record -- python ...`
    wrapped = subprocess.run([sys.executable, "-m", "memprof", "record", "-o", str(tmp_path / "wrapped"), "--", *TORCHRUN, *args],
                             env=_env(), capture_output=True, text=True, timeout=240)
    assert wrapped.returncode == 0, wrapped.stderr[-3000:]
    inside = subprocess.run([*TORCHRUN, "-m", "memprof", "record", "-o", str(tmp_path / "inside.pickle.gz"), "--", "python", *args],
                            env=_env(), capture_output=True, text=True, timeout=240)
    assert inside.returncode == 0, inside.stderr[-3000:]
    # THEN each form wrote one run folder with both ranks, and rank 1 (the larger batch) is heavier
    for run in (tmp_path / "wrapped", tmp_path / "inside"):
        sums = _check_run(run)
        assert sums[1]["peak_allocated_bytes"] > sums[0]["peak_allocated_bytes"]
        d = _cli_json(capsys, "stats", str(run), "--json")
        im = d["imbalance"]
        assert (im["heaviest_rank"], im["lightest_rank"]) == (1, 0)
        assert im["ratio"] == pytest.approx(sums[1]["peak_allocated_bytes"] / sums[0]["peak_allocated_bytes"])
        # the larger batch's input (512 x 512 fp32 = 1 MiB against 8 x 512) is among what rank 1 holds beyond rank 0
        assert any("ddp_train.py" in s["site"] and s["delta"] >= (1 << 20) - 8 * 512 * 4 for s in im["by_site"])
    assert "wrapped" in wrapped.stdout and "rank 1" in wrapped.stdout


def test_torchrun_oom_on_one_rank_writes_every_rank(tmp_path):
    # GIVEN rank 1 runs out of memory at step 1 (simulated on CPU)
    p = subprocess.run([sys.executable, "-m", "memprof", "record", "-o", str(tmp_path / "oom"), "--", *TORCHRUN, SCRIPT,
                        "--batch", "8,512", "--oom-rank", "1", "--oom-step", "1"],
                       env=_env(), capture_output=True, text=True, timeout=240)
    # THEN torchrun's failure is the exit status, rank 1 is `oom`, rank 0 is written and not `ok`
    assert p.returncode != 0
    run = tmp_path / "oom"
    files = rank_files(run)
    assert sorted(files) == [0, 1]
    assert read_meta(files[1])["status"] == "oom"
    assert read_meta(files[0])["status"] in ("error", "terminated")
    sums = load_summaries(run, workers=1)
    assert all(s["peak_allocated_bytes"] == _viewer_peak(files[s["rank"]]) for s in sums)


def test_sigterm_writes_the_rank_and_says_why(tmp_path):
    # GIVEN a worker recording through the API, waiting
    script = tmp_path / "w.py"
    script.write_text("import time, torch, memprof\nwith memprof.record(%r):\n    x = torch.ones(1000, 1000)\n"
                      "    print('ready', flush=True)\n    time.sleep(120)\n" % str(tmp_path / "run.pickle"))
    env = {**_env(), "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        # WHEN torchrun's agent terminates it
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    # THEN its snapshot and status are written
    assert rc == 143
    meta = read_meta(tmp_path / "run" / "rank1.pickle")
    assert meta["status"] == "terminated" and "SIGTERM" in meta["error"]
    assert _viewer_peak(tmp_path / "run" / "rank1.pickle") >= 4_000_000  # the 1000 x 1000 fp32 tensor


# -- the GPU runs (recorded on 2 and 4 H200s) -----------------------------------------------------------
@pytest.fixture()
def gpu_runs(tmp_path) -> Path:
    dst = tmp_path / "ranks"
    shutil.copytree(GPU_RUNS, dst)  # summaries are rewritten when stale: never inside the repository
    return dst


def test_gpu_runs_peaks_match_the_allocator_and_fsdp_shards(gpu_runs):
    shares = {}
    for run in sorted(p for p in gpu_runs.iterdir() if p.is_dir()):
        files = rank_files(run)
        sums = load_summaries(run, workers=1)
        for s in sums:
            meta = read_meta(files[s["rank"]])
            assert s["peak_allocated_bytes"] == _viewer_peak(files[s["rank"]])
            assert abs(s["peak_allocated_bytes"] - meta["peak_allocated_bytes"]) <= 0.01 * meta["peak_allocated_bytes"]
        if run.name.startswith("transformer-"):
            shares[run.name] = sums[0]["max_by_category"]
    for n in (2, 4):
        ddp, fsdp = shares[f"transformer-small-ddp-n{n}"], shares[f"transformer-small-fsdp-n{n}"]
        for cat in ("parameter", "gradient", "optimizer_state"):
            assert fsdp[cat] / ddp[cat] == pytest.approx(1 / n, rel=0.01)
    oom = {s["rank"]: s["status"] for s in load_summaries(gpu_runs / "ddp-script-oom", workers=1)}
    assert oom == {0: "terminated", 1: "oom"}


# -- the dashboard's helpers, called directly --------------------------------------------------------
def test_library_collapses_a_run_and_the_ranks_page_helpers(tmp_path):
    from memprof.dashboard import create_app, state
    from memprof.testing import training_snapshot, write_snapshot

    # GIVEN a served folder with one plain snapshot and a 3-rank run
    write_snapshot(tmp_path / "single.pickle", *training_snapshot(iterations=1, layers=2, hidden_mb=1))
    write_run(tmp_path / "runs" / "r", [4, 2, 6])
    create_app(tmp_path)
    from memprof.dashboard.pages import ranks as ranks_page

    # WHEN the library table is built
    df = state.collapse_runs(state.library(), state.library().table())
    # THEN the run is one row with its rank count and the largest rank's peak
    assert sorted(df["name"]) == ["runs/r/ (3 ranks)", "single.pickle"]
    row = df[df["run"] == "runs/r"].iloc[0]
    sums = load_summaries(tmp_path / "runs" / "r", workers=1)
    assert row["ranks"] == 3 and row["status"] == "ok"
    assert row["peak_allocated_mib"] == round(max(read_meta(tmp_path / "runs" / "r" / f"rank{r}.pickle")["peak_allocated_bytes"]
                                                  for r in range(3)) / 2**20, 1)
    # the Ranks page: its content names the heaviest rank, its table lists each category the heaviest holds more of
    body = ranks_page.content("runs/r")
    assert "heaviest rank 2" in body[1].children
    im = imbalance(sums)
    frame = ranks_page.imbalance_frame(im)
    assert list(frame[frame["kind"] == "category"]["what"]) == [c["category"] for c in im["by_category"]]
    entry = state.library().runs()["runs/r"][1]
    assert ranks_page.click_target({"points": [{"customdata": entry.id}]}) == f"/timeline?snap={entry.id}"
    assert ranks_page.click_target(None) is ranks_page.dash.no_update
    with pytest.raises(Exception, match="no such run"):
        ranks_page.run_data("../elsewhere")


def test_fsdp_analytic_account_is_per_rank(gpu_runs):
    from memprof.analysis import analyze

    # GIVEN the small Transformer (V=10,000, d=768, L=12, d_ff=3072) trained with FSDP2 on 4 ranks
    v, d, L, dff = 10_000, 768, 12, 3072
    p = 2 * v * d + L * (4 * d * d + 2 * d * dff + 4 * d) + 2 * d
    for mode, n in (("fsdp", 4), ("ddp", 1)):
        an = analyze(gpu_runs / f"transformer-small-{mode}-n4" / "rank0.pickle.gz")
        items = dict(zip(an.peak.analytic["item"], an.peak.analytic["expected_bytes"]))
        # THEN parameters, gradients and AdamW state are expected at 1/N of the model per rank (whole under DDP)
        assert [b for k, b in items.items() if k.startswith("parameters")] == [4 * p // n]
        assert [b for k, b in items.items() if k.startswith("AdamW")] == [8 * p // n]


def test_torchrun_whose_workers_record_nothing_is_an_error(tmp_path):
    # GIVEN torchrun starting a worker that is no Python process
    p = subprocess.run([sys.executable, "-m", "memprof", "record", "-o", str(tmp_path / "none"), "--", *TORCHRUN[:-1], "1",
                        "--no-python", "true"], env=_env(), capture_output=True, text=True, timeout=120)
    # THEN memprof says so in one line and fails, rather than reporting an empty run as ok
    assert p.returncode != 0
    assert "no worker recorded anything" in p.stderr and "Traceback" not in p.stderr


def test_a_malformed_summary_is_recomputed(tmp_path):
    # GIVEN a current summary whose content was tampered with (summary files are untrusted)
    run = write_run(tmp_path / "run", [4])
    good = load_summaries(run, workers=1)[0]
    sp = summary_path(run / "rank0.pickle")
    for bad in ({"timeline": {"t_us": [0, "x"], "allocated": [1, 2]}}, {"by_category": {"activation": "many"}},
                {"peak_allocated_bytes": [1]}, {"by_site": [{"site": 3}]}):
        sp.write_text(json.dumps({**good, **bad}))
        # WHEN the run is read, THEN the summary is rebuilt from the snapshot
        assert read_summary(run / "rank0.pickle") is None
        assert load_summaries(run, workers=1)[0]["peak_allocated_bytes"] == _viewer_peak(run / "rank0.pickle")


def test_the_dashboard_keeps_summaries_it_computes_out_of_the_served_folder(tmp_path, monkeypatch):
    """`memprof serve` reads the served folder, never writes into it: a run without summaries gets
    them computed into memprof's cache folder, and the next server start reads them from there."""
    from memprof.dashboard import create_app
    from memprof.analysis import ranks as run_mod

    monkeypatch.setenv("MEMPROF_CACHE_DIR", str(tmp_path / "cache"))
    served = tmp_path / "served"
    run = write_run(served / "run", [8, 4])
    before = sorted(p.relative_to(served) for p in served.rglob("*"))
    # WHEN the Ranks page of a fresh server shows the run
    create_app(served)
    from memprof.dashboard.pages import ranks as ranks_page  # (pages register with the app that exists)

    page = str(ranks_page.layout(run="run"))
    # THEN the ranks are shown, nothing was written inside the served folder, the summaries sit in the cache
    assert "2 ranks" in page
    assert sorted(p.relative_to(served) for p in served.rglob("*")) == before
    for r in (0, 1):
        assert run_mod.cached_summary_path(run / f"rank{r}.pickle").is_file()
    # AND a second server reads them back without summarising again
    monkeypatch.setattr(run_mod, "summarize", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    create_app(served)
    assert "2 ranks" in str(ranks_page.layout(run="run"))
    # AND the command-line path still writes them beside the snapshots, as torchrun runs expect
    monkeypatch.undo()
    monkeypatch.setenv("MEMPROF_CACHE_DIR", str(tmp_path / "cache2"))
    load_summaries(run, workers=1)
    assert summary_path(run / "rank0.pickle").is_file()
