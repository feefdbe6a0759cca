"""The two loaders agree, on real snapshots, on mutations of them and on generated structures.

* every real snapshot of the corpus (``<repo>/../shared/corpus`` or ``$MEMPROF_CORPUS``; missing
  FAILS) and memprof's own golden files load identically through the C loader, the restricted
  unpickler after the C scan, and without the C extension at all;
* ``tests/fuzz/harness.py`` runs for a bounded time in CI on both loaders: no exception other than
  a one-line ``MemprofError``, no disagreement (``harness.disagree``), no crash;
* hypothesis builds snapshot-shaped structures (big and unsigned ints, control characters,
  shared references, nested tuples, odd keys, every pickle protocol and JSON): same verdicts.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.harness import CORPUS, disagree, fingerprint, outcome

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = sorted((ROOT / "tests" / "data" / "golden").glob("*.pickle.gz"))
CORPUS_FILES = sorted(CORPUS.glob("*.pickle.gz")) if CORPUS.is_dir() else []


def test_corpus_is_present() -> None:
    assert len(CORPUS_FILES) >= 35, f"the real-snapshot corpus is missing at {CORPUS} (set MEMPROF_CORPUS)"


@pytest.mark.parametrize("path", CORPUS_FILES + GOLDEN, ids=lambda p: p.name[:60])
def test_real_snapshots_load_identically_on_every_path(path: Path) -> None:
    results = {loader: outcome(path, loader) for loader in ("c", "pure", "python")}
    assert len(set(results.values())) == 1, results


def test_fuzz_harness_on_both_loaders(tmp_path: Path) -> None:
    """Bounded: ~45 s of mutations plus truncation at every offset of the three smallest seeds."""
    seed = int(os.environ.get("MEMPROF_FUZZ_SEED", 20261122))  # fixed in CI (a red run must reproduce); set it to explore
    seconds = float(os.environ.get("MEMPROF_FUZZ_SECONDS", 45))
    env = dict(os.environ, PYTHONPATH=str(ROOT), MEMPROF_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "fuzz" / "harness.py"), "--seconds", str(seconds), "--seed", str(seed),
         "--out", str(tmp_path / "out"), "--truncate-all"],
        capture_output=True, text=True, env=env, timeout=seconds + 240,
    )
    current = tmp_path / "out" / "current.bin"
    assert proc.returncode == 0, (
        f"the harness died (rc {proc.returncode}, seed {seed}); input: {current} "
        f"({current.read_bytes()[:200]!r} ...)\n{proc.stderr[-3000:]}" if current.exists() else proc.stderr[-3000:]
    )
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    assert stats["exceptions"] == 0 and stats["disagree"] == 0, (seed, stats["findings"][:5])
    assert stats["executions"] > 2000 and stats["agree_ok"] > 50, stats


# ---------------------------------------------------------------------------
# structure-aware generation

_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12) | st.sampled_from(
    ["alloc", "free_completed", "\x1b[2K\r", "a\nb", "", "/x/y.py"])
_int = st.one_of(
    st.integers(-(2**70), 2**70), st.sampled_from([0, 1, -1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), 10**9]),
)
_scalar = st.one_of(_int, _text, st.none(), st.booleans(), st.floats(allow_nan=False, allow_infinity=False))
_nested = st.recursive(_scalar, lambda c: st.lists(c, max_size=3) | st.tuples(c, c) | st.dictionaries(_text, c, max_size=3),
                       max_leaves=12)

_frame = st.fixed_dictionaries({"filename": _text | _nested, "line": _int | _nested, "name": _text})
_entry = st.fixed_dictionaries(
    {"action": st.sampled_from(["alloc", "free_requested", "free_completed", "segment_alloc", "oom", "snapshot", "weird"]) | _nested},
    optional={"addr": _int, "size": _int | _nested, "stream": _int, "time_us": _int, "device_free": _int,
              "frames": st.lists(_frame, max_size=3) | st.none(), "user_metadata": _text | _nested, "compile_context": _nested},
)
_block = st.fixed_dictionaries({"size": _int, "state": st.sampled_from(["active_allocated", "inactive", "active_pending_free"]) | _nested},
                               optional={"address": _int, "requested_size": _int, "frames": st.lists(_frame, max_size=2)})
_segment = st.fixed_dictionaries(
    {"address": _int, "total_size": _int},
    optional={"device": st.integers(0, 3) | _int, "blocks": st.lists(_block, max_size=3), "stream": _int,
              "segment_type": st.sampled_from(["large", "small"]) | _nested, "segment_pool_id": st.tuples(_int, _int) | _nested},
)
_snapshot = st.fixed_dictionaries(
    {"segments": st.lists(_segment, max_size=3), "device_traces": st.lists(st.lists(_entry, max_size=8), max_size=3)},
    optional={"allocator_settings": _nested, "external_annotations": st.lists(
        st.fixed_dictionaries({"device": st.integers(0, 2) | _int, "stage": _text, "name": _text | _nested, "time_us": _int}), max_size=3)},
)


def _share(obj: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """Make some references shared, as torch's pickles do (frames, frame lists, blocks)."""
    traces = obj["device_traces"]
    frames = [f for t in traces for e in t for f in (e.get("frames") or [])]
    for t in traces:
        for e in t:
            if frames and e.get("frames") and rng.random() < 0.5:
                e["frames"][0] = rng.choice(frames)
    if len(traces) > 1 and rng.random() < 0.2:
        traces[1] = traces[0]  # the same list twice: the C loader hands over, both must agree
    return obj


@settings(max_examples=int(os.environ.get("MEMPROF_HYPOTHESIS_EXAMPLES", 300)), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(snap=_snapshot, protocol=st.sampled_from([0, 2, 3, 4, 5, "json"]), seed=st.integers(0, 2**16))
def test_generated_snapshots_agree(tmp_path_factory: pytest.TempPathFactory, snap: dict[str, Any], protocol: Any, seed: int) -> None:
    snap = _share(snap, random.Random(seed))
    path = tmp_path_factory.mktemp("gen") / "s.bin"
    if protocol == "json":
        try:
            data = json.dumps(snap).encode()
        except (TypeError, ValueError):
            return  # tuples-as-keys and the like have no JSON form
    else:
        data = pickle.dumps(snap, protocol=protocol)
    path.write_bytes(data)
    results = [outcome(path, "c"), outcome(path, "pure")]
    assert not disagree(results), results
    if results[0].startswith("ok:") and len(data) < 20_000:
        assert outcome(path, "python") == results[0]


def test_fingerprint_sees_a_changed_value(tmp_path: Path) -> None:
    from fuzz.hostile import small_snapshot

    a, b = small_snapshot(), small_snapshot()
    b["device_traces"][0][0]["size"] += 1
    pa, pb = tmp_path / "a.pickle", tmp_path / "b.pickle"
    pa.write_bytes(pickle.dumps(a, protocol=4))
    pb.write_bytes(pickle.dumps(b, protocol=4))
    import memprof  # noqa: F401

    L = sys.modules["memprof.snapshot.load"]
    assert fingerprint(L.load_uncached(pa)) != fingerprint(L.load_uncached(pb))
