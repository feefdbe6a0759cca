import numpy as np

from memprof.replay.downsample import minmax_step, step_envelope_ok, visible_slice


def test_small_input_is_returned_whole() -> None:
    # GIVEN fewer points than buckets WHEN reduced THEN every index comes back
    x = np.arange(10.0)
    assert minmax_step(x, x * 2, n_buckets=100).tolist() == list(range(10))


def test_peaks_and_troughs_survive_reduction() -> None:
    # GIVEN a noisy step curve with one narrow spike and one narrow dip
    rng = np.random.default_rng(0)
    x = np.cumsum(rng.integers(1, 5, 200_000)).astype(float)
    y = rng.integers(100, 200, len(x))
    y[123_457] = 10_000
    y[7_001] = -5
    # WHEN reduced to 500 buckets
    idx = minmax_step(x, y, n_buckets=500)
    # THEN few points remain, sorted, and the extremes are among them
    assert len(idx) <= 3 * 500 + 2
    assert np.all(np.diff(idx) > 0)
    assert 123_457 in idx and 7_001 in idx
    assert step_envelope_ok(x, y, idx, x[0], x[-1])


def test_zoomed_range_keeps_value_carried_in() -> None:
    # GIVEN a staircase WHEN the view starts between two steps
    x = np.arange(0.0, 100_000.0)
    y = np.arange(100_000)
    lo, hi = visible_slice(x, 500.5, 600.5)
    # THEN the step in force at 500.5 (x=500) and one point past the end are included
    assert (lo, hi) == (500, 602)
    idx = minmax_step(x, y, 50_000.5, 90_000.0, n_buckets=100)
    assert idx[0] == 50_000 and idx[-1] == 90_001
    assert len(idx) <= 302
    assert step_envelope_ok(x, y, idx, 50_000.5, 90_000.0)


def test_every_bucket_keeps_its_max() -> None:
    rng = np.random.default_rng(1)
    x = np.sort(rng.random(50_000)) * 1000
    y = rng.integers(0, 1 << 30, len(x))
    idx = minmax_step(x, y, 0, 1000, n_buckets=100)
    bucket = np.clip((x / 1000 * 100).astype(int), 0, 99)
    for b in range(100):
        assert y[idx][bucket[idx] == b].max() == y[bucket == b].max()
