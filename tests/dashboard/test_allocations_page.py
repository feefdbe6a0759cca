"""The Allocations page over a real H100 snapshot: text and unit filters that filter, sorting,
filter errors in place of the count, and the CSV export of the filtered, sorted table.

Expected rows are computed independently from the model's ``allocs`` frame with plain Python."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

pytest.importorskip("dash")

ROOT = Path(__file__).resolve().parents[2] / "snapshots"
EAGER = "h100/transformer-small-train-eager-bf16.pickle.gz"


@pytest.fixture(scope="module")
def ctx():
    from memprof.dashboard import create_app
    from memprof.dashboard.state import library

    create_app(ROOT)
    lib = library()
    e = lib.get(EAGER)
    return lib.model(e.id, None), {"snap": e.id, "device": None}


def _count(text: str) -> int:
    return int(text.split()[0].replace(",", ""))


def _rows(m, pred) -> list[int]:
    a = m.allocs
    return [i for i in range(len(a)) if pred(a.iloc[i])]


def test_text_filters_filter(ctx) -> None:
    from memprof.dashboard.pages import allocations

    m, key = ctx
    # what the table sends when 'activation' is typed in the category cell
    rows, _, count = allocations.page(0, 500, None, "{category} scontains activation", key)
    exp = [i for i, c in enumerate(m.allocs["category"]) if "activation" in c]
    assert 0 < len(exp) < len(m.allocs)
    assert _count(count) == len(exp) and count.endswith(f"of {len(m.allocs):,} allocations")
    assert [r["row"] for r in rows] == exp[:500] and all(r["category"] == "activation" for r in rows)
    site = "transformer.py:57"
    _, _, count = allocations.page(0, 20, None, f"{{site}} scontains {site}", key)
    assert _count(count) == sum(site in s for s in m.allocs["site"]) > 0


def test_unit_filters_and_sort(ctx) -> None:
    from memprof.dashboard.pages import allocations

    m, key = ctx
    sizes = m.allocs["size"].tolist()
    for q, pred in (('{size} s> "50 MiB"', lambda s: s > 50 * 2**20), ("{size} > 50 MiB", lambda s: s > 50 * 2**20),
                    ("{size} <= 1.5GB", lambda s: s <= 1.5e9), ("{size} = 512 B", lambda s: s == 512),
                    ("{size_h} s> \"8 MiB\"", lambda s: s > 8 * 2**20)):
        _, _, count = allocations.page(0, 20, None, q, key)
        assert _count(count) == sum(pred(s) for s in sizes), q
    assert sum(s > 50 * 2**20 for s in sizes) > 0
    sort = [{"column_id": "category", "direction": "asc"}, {"column_id": "size", "direction": "desc"}]
    rows, n_pages, _ = allocations.page(1, 25, sort, "{size} > 1 MiB", key)
    exp = sorted((i for i, s in enumerate(sizes) if s > 2**20), key=lambda i: (m.allocs["category"][i], -sizes[i]))
    assert [r["row"] for r in rows] == exp[25:50]
    assert n_pages == -(-len(exp) // 25)


def test_filter_error_is_shown_not_dropped(ctx) -> None:
    from memprof.dashboard.pages import allocations

    _, key = ctx
    rows, pages, count = allocations.page(0, 20, None, "{size} > lots", key)
    assert rows == [] and pages == 1
    assert "needs a number or a size" in count.children and count.className == "error"


def test_csv_export_is_the_filtered_sorted_table(ctx) -> None:
    from memprof.dashboard.pages import allocations

    m, key = ctx
    sort = [{"column_id": "size", "direction": "asc"}]
    out = allocations.export(1, sort, "{category} scontains activation && {size} >= 1 MiB", key)
    assert out["filename"].endswith("-allocations.csv")
    got = list(csv.DictReader(io.StringIO(out["content"])))
    a = m.allocs
    exp = sorted((i for i in range(len(a)) if "activation" in a["category"][i] and a["size"][i] >= 2**20),
                 key=lambda i: a["size"][i])
    assert [int(r["row"]) for r in got] == exp
    assert [int(r["size"]) for r in got] == [int(a["size"][i]) for i in exp]
    assert list(got[0]) == list(allocations.ALLOC_COLUMNS)
    assert all(r["size_h"].endswith(("B", "KiB", "MiB", "GiB")) for r in got)
    # the same page-visible values
    rows, _, _ = allocations.page(0, 5, sort, "{category} scontains activation && {size} >= 1 MiB", key)
    assert [r["row"] for r in rows] == exp[:5]
