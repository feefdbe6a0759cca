"""The live view: the publisher's numbers, its HTTP stream, a real recording process followed by the
server, and the Live page in headless Chromium following it to the snapshot link."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from memprof import live
from memprof.recorder import publish
from memprof.recorder.core import PhaseTimer

REPO = Path(__file__).resolve().parents[2]

TRAIN = '''
"""A small CPU training loop with phases that runs for a few seconds."""
import sys, time
import torch
import memprof

steps = int(sys.argv[1])
model = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 256))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
kept = []
for i in range(steps):
    with memprof.phase("forward", i):
        loss = model(torch.randn(512, 256)).square().mean()
        kept.append(torch.ones(256 * 1024))  # 1 MiB kept every step
    with memprof.phase("backward", i):
        loss.backward()
    with memprof.phase("optimizer", i):
        opt.step()
        opt.zero_grad()
    time.sleep(0.2)
'''


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeCounter:
    """A deterministic allocator counter: ``allocated`` bytes, settable by the test."""

    def __init__(self) -> None:
        self.allocated = 1000

    def __call__(self) -> tuple[int, int | None]:
        return self.allocated, self.allocated + 24


def test_growth_per_phase_and_iteration() -> None:
    # GIVEN a publisher on a free port whose counter the test controls
    pub = publish.Publisher(torch.device("cpu"), port=0, hz=50)
    fake = pub.read = FakeCounter()
    pub.start()
    try:
        assert publish.ACTIVE is pub
        timer = PhaseTimer(torch.device("cpu"))
        # WHEN two iterations run: forward +300, backward -200 (and +50 kept), optimizer +10
        for it in range(2):
            with timer.time("forward", it):
                fake.allocated += 300
                s = pub.sample()
                assert (s["phase"], s["iteration"], s["allocated"], s["reserved"]) == ("forward", it, fake.allocated, fake.allocated + 24)
            with timer.time("backward", it):
                fake.allocated -= 150
            with timer.time("optimizer", it):
                fake.allocated += 10
        with timer.time("forward", 2):
            pass
        # THEN the last completed iteration's growth is per phase, largest change first, and its sum
        s = pub.sample()
        assert s["growth"] == [{"phase": "forward", "bytes": 300}, {"phase": "backward", "bytes": -150}, {"phase": "optimizer", "bytes": 10}]
        assert s["iteration_growth"] == 160 and s["iteration"] == 2 and s["phase"] is None
        time.sleep(0.2)
        state = json.loads(urllib.request.urlopen(pub.url + "live.json", timeout=5).read())
        assert state["status"] == "running" and state["source"].startswith("process rss") and len(state["samples"]) >= 3
        assert all(a["t"] < b["t"] for a, b in zip(state["samples"], state["samples"][1:]))
    finally:
        pub.stop(status="ok", snapshot="/tmp/x.pickle.gz", linger=0.1)
    assert publish.ACTIVE is None  # off again: the phase timer does nothing more than read this attribute
    with pytest.raises(OSError):
        urllib.request.urlopen(pub.url + "live.json", timeout=2)


def test_stream_ends_with_the_snapshot() -> None:
    pub = publish.Publisher(torch.device("cpu"), port=0, hz=20).start()
    lines: list[dict[str, Any]] = []

    def read() -> None:
        with urllib.request.urlopen(pub.url + "stream", timeout=10) as r:
            lines.extend(json.loads(x) for x in r)

    th = threading.Thread(target=read)
    th.start()
    time.sleep(0.5)
    pub.stop(status="ok", snapshot="run.pickle.gz")
    th.join(10)
    assert lines[0]["type"] == "hello" and lines[0]["pid"] == os.getpid()
    assert [x["type"] for x in lines[1:-1]] == ["sample"] * (len(lines) - 2) and len(lines) >= 5
    assert lines[-1] == {"type": "end", "status": "ok", "snapshot": os.path.abspath("run.pickle.gz"), "t": lines[-1]["t"]}


def test_port_in_use_is_one_line() -> None:
    pub = publish.Publisher(torch.device("cpu"), port=0).start()
    try:
        from memprof.errors import MemprofError

        with pytest.raises(MemprofError, match="cannot listen on 127.0.0.1"):
            publish.Publisher(torch.device("cpu"), port=pub.port)
    finally:
        pub.stop(linger=0)


def test_follower_rejects_junk() -> None:
    assert live._clean_sample({"t": 1.0, "allocated": "lots"}) is None
    assert live._clean_sample({"t": True, "allocated": 1}) is None
    s = live._clean_sample({"t": 2.0, "allocated": 5, "reserved": 2**70, "phase": "x" * 500, "growth": [{"phase": 1, "bytes": 2}, "no"]})
    assert s == {"t": 2.0, "allocated": 5, "reserved": None, "phase": "x" * 80, "iteration": None, "growth": [], "iteration_growth": None}


def start_recording(root: Path, port: int, steps: int) -> tuple[subprocess.Popen, Path]:
    script = root.parent / "train_live.py"
    script.write_text(TRAIN)
    out = root / "live" / "run.pickle.gz"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    proc = subprocess.Popen([sys.executable, "-m", "memprof", "record", "--live", "--live-port", str(port), "--device", "cpu",
                             "-o", str(out), "--", "python", str(script), str(steps)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=str(root.parent))
    return proc, out


def test_follow_a_real_recording(tmp_path: Path) -> None:
    # GIVEN `memprof record --live` running a training script in another process
    root = tmp_path / "served"
    root.mkdir()
    port = _free_port()
    proc, out = start_recording(root, port, steps=16)
    try:
        # WHEN the server side follows its port
        f = live.Follower(port)
        end = time.time() + 120
        while time.time() < end:
            v = f.view()
            if v["status"] in ("ok", "error", "oom"):
                break
            time.sleep(0.1)
        # THEN it saw the run: its samples, phases and iterations, and at the end the snapshot's path
        log = proc.communicate(timeout=60)[0].decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, log
    assert f"memprof: live on http://127.0.0.1:{port}/stream" in log
    assert v["status"] == "ok" and v["snapshot"] == str(out.resolve()) and out.is_file()
    assert v["hello"]["source"].startswith("process rss") and v["hello"]["device"] == "cpu"
    samples = v["samples"]
    assert len(samples) >= 8 and all(a["t"] < b["t"] for a, b in zip(samples, samples[1:]))
    assert max(s["iteration"] or 0 for s in samples) >= 8
    assert {s["phase"] for s in samples} <= {"forward", "backward", "optimizer", None}  # a sample may fall between phases
    assert {g["phase"] for s in samples for g in s["growth"]} == {"forward", "backward", "optimizer"}  # read at each phase's ends
    from memprof import load

    assert load(out, use_cache=False).info["entries_per_device"][0] > 0  # the snapshot is a real one


# -- the Live page in headless Chromium --------------------------------------------------------------

@pytest.fixture()
def browser_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    from chromium import require, serve

    require()
    root = tmp_path / "served"
    root.mkdir()
    with serve(root) as url:
        yield url, root


@pytest.mark.browser
def test_live_page_follows_a_recording(browser_server: tuple[str, Path], tmp_path: Path) -> None:
    from chromium import chrome, css, graph_ready, no_severe, shot, wait

    url, root = browser_server
    port = _free_port()
    d = chrome(tmp_path / "chrome")
    proc, out = start_recording(root, port, steps=40)
    try:
        # GIVEN a recording running; WHEN the Live page follows its port
        d.get(f"{url}/live?port={port}")
        wait(lambda: "recording" in css(d, "#live-status")[0].text, timeout=90, what="the live status")
        wait(lambda: graph_ready(d, "live-graph") and d.execute_script(
            "return document.querySelector('#live-graph .js-plotly-plot').data[0].x.length") >= 6, timeout=60, what="live samples")
        # THEN the page shows the numbers as they come: the graph grows, the phase and iteration are named
        n0 = d.execute_script("return document.querySelector('#live-graph .js-plotly-plot').data[0].x.length")
        wait(lambda: d.execute_script("return document.querySelector('#live-graph .js-plotly-plot').data[0].x.length") > n0 + 2,
              timeout=30, what="more samples")
        now = wait(lambda: [e.text for e in css(d, "#live-now-text") if "iteration" in e.text and "iteration -" not in e.text],
                    timeout=30, what="an iteration number")[0]
        assert "allocated" in now
        wait(lambda: css(d, "#live-growth-table td"), timeout=30, what="growth per phase")
        assert "the snapshot is linked here when the run ends" in css(d, "#live-snapshot")[0].text
        shot(d, "live")
        # and when the run ends it links to the snapshot, which opens in the timeline
        link = wait(lambda: css(d, "#live-snapshot-link"), timeout=120, what="the snapshot link")[0]
        assert link.text == "live/run.pickle.gz" and "finished" in css(d, "#live-status")[0].text
        link.click()
        wait(lambda: graph_ready(d, "timeline-graph"), timeout=60, what="the recorded run's timeline")
        no_severe(d, "live")
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        d.quit()


@pytest.mark.cuda
def test_cuda_samples_are_the_allocators_counters() -> None:
    dev = torch.device("cuda", torch.cuda.current_device())
    pub = publish.Publisher(dev, port=0)
    try:
        x = torch.empty(32 * 2**20, dtype=torch.uint8, device=dev)
        s = pub.sample()
        assert s["allocated"] == torch.cuda.memory_allocated(dev) and s["reserved"] == torch.cuda.memory_reserved(dev)
        assert s["allocated"] >= x.numel() and pub.source == "cuda caching allocator"
    finally:
        pub.server.server_close()


def test_live_page_callback(tmp_path: Path) -> None:
    # GIVEN the app over a folder, and a publisher that finished with a snapshot inside it and one outside
    from memprof.dashboard import create_app

    create_app(tmp_path)
    from memprof.dashboard.pages import live as page
    (tmp_path / "runs").mkdir()
    inside = tmp_path / "runs" / "a.pickle"
    shutil.copy(REPO / "snapshots" / "h100" / "script-train_tiny.pickle.gz", inside)
    # WHEN the page asks about a bad port THEN it says so; about a silent port THEN it waits
    assert page.update("http", None)[1] == "not a port: http"
    port = _free_port()
    fig, status, now, growth, snap, key = page.update(port, None)
    assert status.startswith("waiting") and now == "no samples yet" and "linked here when the run ends" in snap
    assert page.update(port, key) == (page.dash.no_update,) * 6  # nothing new: nothing sent
    # and a finished run links to its snapshot when it lies under the served folder
    link = page.snapshot_panel(str(inside), "ok")
    assert link.children[1].href.startswith("/timeline?snap=") and link.children[1].children == "runs/a.pickle"
    outside = page.snapshot_panel("/etc/passwd", "ok")
    assert "outside the served folder" in outside.children


def test_followers_per_recording_are_capped() -> None:
    pub = publish.Publisher(torch.device("cpu"), port=0, hz=20).start()
    conns = []
    try:
        for _ in range(live.MAX_STREAMS):
            conns.append(urllib.request.urlopen(pub.url + "stream", timeout=5))
            conns[-1].readline()  # the hello: this one is being served
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(pub.url + "stream", timeout=5)
        assert e.value.code == 503 and pub.streams == live.MAX_STREAMS
    finally:
        pub.stop(linger=2.0)
        for c in conns:
            c.close()
