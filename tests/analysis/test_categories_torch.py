"""memprof's categories against torch.profiler's own memory categories, on a CPU training loop."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("torch")

from memprof.analysis import analyze  # noqa: E402
from memprof.snapshot.columns import columns_from_raw  # noqa: E402


@pytest.fixture(scope="module")
def recorded() -> tuple[pd.DataFrame, pd.Series]:
    from torchprof import record_tiny_training

    raw, meta, cats = record_tiny_training(iterations=3)
    an = analyze(columns_from_raw(raw), meta=meta)
    a = an.allocations
    assert an.phases["source"].iloc[0] == "annotations"
    assert set(an.phases["phase"]) == {"forward", "backward", "optimizer"}
    traced = a[a["alloc_idx"] >= 0]
    theirs = pd.Series(np.asarray(cats, dtype=object)[traced["alloc_idx"].to_numpy()], index=traced.index)
    return a, theirs


def test_gradients_and_optimizer_state_agree_exactly(recorded: tuple[pd.DataFrame, pd.Series]) -> None:
    a, theirs = recorded
    ours = a.loc[theirs.index, "category"].astype(str)
    for cat in ("gradient", "optimizer_state"):
        assert (theirs == cat).sum() > 0
        assert (ours[theirs == cat] == cat).all(), cat
        assert (theirs[ours == cat] == cat).all(), cat


def test_activations_saved_for_backward_agree(recorded: tuple[pd.DataFrame, pd.Series]) -> None:
    a, theirs = recorded
    t = a.loc[theirs.index]
    ours = t["category"].astype(str)
    # every allocation memprof calls an activation is one for torch too
    assert (ours == "activation").sum() > 0
    assert (theirs[ours == "activation"] == "activation").all()
    # torch's activations made in forward and freed in backward: memprof agrees on (nearly) all bytes
    fwd = (theirs == "activation") & (t["phase"] == "forward") & (t["free_phase"] == "backward")
    assert fwd.sum() > 0
    assert t.loc[fwd & (ours == "activation"), "size"].sum() >= 0.9 * t.loc[fwd, "size"].sum()


def test_temporaries_and_preexisting(recorded: tuple[pd.DataFrame, pd.Series]) -> None:
    a, theirs = recorded
    ours = a.loc[theirs.index, "category"].astype(str)
    assert (ours[theirs == "temporary"] == "temporary").all()
    pre = a[a["alloc_idx"] < 0]
    assert set(pre["category"].astype(str)) <= {"parameter", "input"}
    assert (pre["category"] == "parameter").sum() == 6  # 3 Linear layers: weight + bias
