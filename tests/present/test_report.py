"""``memprof report``: one offline HTML file, nothing fetched from the network."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pytest

from memprof.cli import main

H100 = Path(__file__).resolve().parents[2] / "snapshots" / "h100"
A = H100 / "transformer-small-train-eager-bf16.pickle.gz"
B = H100 / "transformer-small-train-compiled-bf16.pickle.gz"


class _Tags(HTMLParser):
    """Every URL a browser would fetch from a tag (script src, link href, img src, iframe src)."""

    def __init__(self) -> None:
        super().__init__()
        self.fetched: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        d = dict(attrs)
        if tag == "script":
            self.scripts += 1
        for t, attr in (("script", "src"), ("link", "href"), ("img", "src"), ("iframe", "src")):
            if tag == t and d.get(attr):
                self.fetched.append(str(d[attr]))


def _check_offline(text: str) -> _Tags:
    p = _Tags()
    p.feed(text)
    assert p.fetched == []  # nothing is loaded from anywhere: plotly.js is inline
    assert "Plotly.newPlot" in text and "plotly.js v" in text.lower()
    return p


def test_report_one(tmp_path: Path, capsys) -> None:
    from memprof.analysis import analyze
    from memprof.present.views import build_model, verdict

    out = tmp_path / "r.html"
    assert main(["report", str(A), "-o", str(out)]) == 0
    text = out.read_text()
    _check_offline(text)
    an = analyze(A)
    v = verdict(build_model(an.snap, an.rep, an.meta, analysis=an))
    assert f"id='verdict'>{v['verdict']}</div>" in text
    assert "peak breakdown by category" in text and "allocations alive at the peak" in text
    assert text.count("Plotly.newPlot") == 2  # timeline + category bars
    assert "wrote" in capsys.readouterr().out


def test_report_two(tmp_path: Path) -> None:
    out = tmp_path / "r2.html"
    assert main(["report", str(A), str(B), "-o", str(out)]) == 0
    text = out.read_text()
    _check_offline(text)
    assert "comparison" in text and "source lines that changed at the peak" in text
    assert text.count("Plotly.newPlot") == 5  # overlay + 2 x (timeline, categories)
    assert text.count("<script type=\"text/javascript\">/**") <= 1  # plotly.js embedded once


@pytest.mark.parametrize("argv", [["report", "/nonexistent/x.pickle"], ["report", str(Path(__file__))]])
def test_report_bad_input(tmp_path: Path, capsys, argv: list[str]) -> None:
    assert main(argv + ["-o", str(tmp_path / "bad.html")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("memprof: ")
    assert not (tmp_path / "bad.html").exists()
