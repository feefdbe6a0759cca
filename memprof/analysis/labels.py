"""Label columns as categoricals: a few distinct strings over millions of rows.

A plain string column of 10M rows costs seconds to build (pandas 3 stores it as Arrow strings)
and seconds again to read back into numpy; a categorical is one small code array plus each
label once. Every label column of the allocations table is built with these.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd


def _index(labels: Sequence[str] | np.ndarray) -> pd.Index:
    return pd.Index(np.asarray(list(labels), dtype=object), dtype=object)


def as_categorical(labels: np.ndarray) -> pd.Categorical:
    """Strings (an object array) as a categorical, categories in order of first appearance."""
    codes, uniq = pd.factorize(np.asarray(labels, dtype=object))
    return pd.Categorical.from_codes(codes, categories=_index(uniq))


def from_codes(codes: np.ndarray, labels: Sequence[str], drop_unused: bool = True) -> pd.Categorical:
    """``labels[codes]`` as a categorical; labels no row uses are dropped unless ``drop_unused`` is False."""
    c = np.asarray(codes)
    dt = np.int8 if len(labels) < 127 else np.int32
    cat = pd.Categorical.from_codes(c.astype(dt, copy=False), categories=_index(labels))
    if drop_unused and len(labels):
        used = np.bincount(c, minlength=len(labels)) > 0 if len(c) else np.zeros(len(labels), bool)
        if not used.all():
            keep = np.flatnonzero(used)
            remap = np.full(len(labels), -1, dtype=np.int64)
            remap[keep] = np.arange(len(keep))
            cat = pd.Categorical.from_codes(remap[c].astype(dt, copy=False),
                                            categories=_index([labels[int(k)] for k in keep]))
    return cat


def constant(n: int, label: str = "") -> pd.Categorical:
    """``n`` rows of one label."""
    return pd.Categorical.from_codes(np.zeros(n, dtype=np.int8), categories=_index([label]))


def overlay(base: pd.Categorical, top: pd.Categorical, mask: np.ndarray) -> pd.Categorical:
    """``base`` with the rows in ``mask`` taken from ``top`` (same length), as one categorical."""
    cats = list(base.categories)
    pos = {c: i for i, c in enumerate(cats)}
    for c in top.categories:
        if c not in pos:
            pos[c] = len(cats)
            cats.append(c)
    tmap = np.array([pos[c] for c in top.categories], dtype=np.int64)
    codes = np.asarray(base.codes, dtype=np.int64).copy()
    m = np.asarray(mask, dtype=bool)
    codes[m] = tmap[np.asarray(top.codes)[m]]
    return from_codes(codes, cats)



def codes(col: pd.Series) -> tuple[np.ndarray, list[str]]:
    """(integer code per row, label of each code) of a label column, categorical or not; a missing
    value gets the last code, whose label is ''."""
    arr = col.array
    if isinstance(arr, pd.Categorical):
        names = [str(c) for c in arr.categories] + [""]
        c = np.asarray(arr.codes)
        return (np.where(c < 0, len(names) - 1, c) if len(c) and c.min() < 0 else c), names
    c, uniq = pd.factorize(np.asarray(col, dtype=object))
    names = [str(u) for u in uniq] + [""]
    return np.where(c < 0, len(names) - 1, c), names
