"""Deterministic train / val / test splits: stratified by cell, grouped by patient (no id in two splits).

If the spec names a ``split`` column, it is used as is. Otherwise rows are grouped into *units* (all rows sharing
``spec.patient_col``; a row on its own when there is no id column or the id is blank), each unit is stratified by its
most frequent cell, and the units of each stratum are shuffled with a seed derived from ``(seed, stratum)`` and dealt
greedily to the split furthest below its target share. Changing one cell therefore never reshuffles another.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from fairsample.core.errors import ConfigError, DataError

if TYPE_CHECKING:
    from fairsample.data.folder import FolderDataset

SPLIT_NAMES: tuple[str, str, str] = ("train", "val", "test")
#: Accepted spellings in a split column (case-insensitive).
SPLIT_ALIASES: dict[str, str] = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}

_BAD_FRACTIONS = "`fractions` must be three numbers >= 0 (train, val, test) that sum to 1, got {value!r}."
_BAD_SEED = "`seed` must be an integer >= 0, got {value!r}."
_BAD_SPLIT_VALUE = (
    "{rows} {have} a {column} value that is not a split name (first: row {row}, {value!r}); "
    "use one of {allowed} (case-insensitive)."
)
_MISSING_SPLIT_COLUMN = "split column {column!r} is not in the metadata (columns present: {present}); fix `split`."


def normalize_split_values(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Map split-column spellings to ``train`` / ``val`` / ``test``.

    Args:
        values: the split column as strings.

    Returns:
        ``(names, bad)``: ``(N,)`` object array of canonical names (``""`` where unrecognised) and an ``(N,)`` bool
        mask of unrecognised rows.

    Example:
        >>> names, bad = normalize_split_values(pd.Series(["Train", "validation", "x"]))
        >>> names.tolist(), bad.tolist()
        (['train', 'val', ''], [False, False, True])
    """
    names = values.astype(str).str.strip().str.lower().map(SPLIT_ALIASES).fillna("").to_numpy(dtype=object)
    return names, names == ""


def _stratum_rng(seed: int, stratum: str) -> np.random.Generator:
    """A generator seeded by (seed, stable hash of the stratum), independent of the other strata."""
    digest = int.from_bytes(hashlib.blake2b(stratum.encode("utf-8"), digest_size=8).digest(), "little")
    return np.random.default_rng([seed, digest])


def _deal(weights: Sequence[int], fractions: Sequence[float]) -> list[int]:
    """Deal shuffled units greedily to the split furthest below target; each positive split gets >= 1 if possible."""
    total = float(sum(weights))
    targets = [f * total for f in fractions]
    active = [s for s, f in enumerate(fractions) if f > 0]
    filled = [0.0, 0.0, 0.0]
    n_units = [0, 0, 0]
    out = []
    for j, w in enumerate(weights):
        empty = [s for s in active if n_units[s] == 0]
        candidates = empty if empty and len(empty) >= len(weights) - j else active
        s = max(candidates, key=lambda k: (targets[k] - filled[k], -k))
        filled[s] += w
        n_units[s] += 1
        out.append(s)
    return out


def _check_args(fractions: Sequence[float], seed: int) -> tuple[float, float, float]:
    """Validate fractions and seed (ConfigError on misuse)."""
    try:
        fr = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        raise ConfigError(_BAD_FRACTIONS.format(value=fractions)) from None
    if len(fr) != 3 or not all(math.isfinite(f) and f >= 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise ConfigError(_BAD_FRACTIONS.format(value=fractions))
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(_BAD_SEED.format(value=seed))
    return fr[0], fr[1], fr[2]


def _from_column(ds: FolderDataset) -> dict[str, np.ndarray]:
    """Indices per split from the spec's split column."""
    column = ds.spec.split
    if column not in ds.frame.columns:
        raise DataError(_MISSING_SPLIT_COLUMN.format(column=column, present=list(ds.frame.columns)))
    names, bad = normalize_split_values(ds.frame[column])
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        n = int(bad.sum())
        raise DataError(
            _BAD_SPLIT_VALUE.format(
                rows=f"{n} row{'s' if n != 1 else ''}",
                have="have" if n != 1 else "has",
                column=column,
                row=first + 1,
                value=ds.frame[column].iloc[first],
                allowed=sorted(SPLIT_ALIASES),
            )
        )
    return {name: np.flatnonzero(names == name).astype(np.int64) for name in SPLIT_NAMES}


def split_indices(
    ds: FolderDataset, *, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, np.ndarray]:
    """Deterministic train / val / test row indices.

    Uses ``ds.spec.split`` when set. Otherwise stratifies by cell and, when ``ds.spec.patient_col`` is set, keeps all
    rows of one id in one split (a unit is stratified by its most frequent cell). Every stratum with at least three
    units gets at least one unit in each split whose fraction is positive; without an id column a unit is one image,
    so every cell with >= 3 images appears in train, val and test.

    Args:
        ds: a loaded dataset.
        fractions: target shares ``(train, val, test)``, each >= 0, summing to 1 (ignored with a split column).
        seed: integer >= 0; the same ``(dataset, fractions, seed)`` always gives the same split.

    Returns:
        ``{"train", "val", "test"}`` -> sorted ``(n_split,)`` int64 row indices; together they cover every row once.

    Raises:
        ConfigError: bad ``fractions`` or ``seed``.
        DataError: the split column is missing or holds a value that is not a split name.

    Example:
        >>> import pandas as pd
        >>> from fairsample.data import DatasetSpec, FolderDataset
        >>> frame = pd.DataFrame({"file_name": [f"{i}.png" for i in range(20)], "label": ["0", "1"] * 10,
        ...                       "sex": ["F"] * 10 + ["M"] * 10})
        >>> ds = FolderDataset(".", DatasetSpec(groups=("sex",)), frame)
        >>> parts = split_indices(ds, seed=0)
        >>> [len(parts[k]) for k in ("train", "val", "test")]
        [12, 4, 4]
    """
    fr = _check_args(fractions, seed)
    if ds.spec.split is not None:
        return _from_column(ds)
    n = len(ds)
    cell_ids = ds.cell_ids()
    order = {c: k for k, c in enumerate(ds.cells())}
    cell_codes = np.fromiter((order[c] for c in cell_ids), dtype=np.int64, count=n)
    pcol = ds.spec.patient_col
    if pcol is not None and pcol in ds.frame.columns:
        ids = ds.frame[pcol].astype(str).str.strip().to_numpy(dtype=object)
        blank = ids == ""
        ids[blank] = [f"\0row{i}" for i in np.flatnonzero(blank)]
        unit_codes, _ = pd.factorize(ids)
    else:
        unit_codes = np.arange(n)
    n_units = int(unit_codes.max()) + 1 if n else 0
    pairs = pd.DataFrame({"u": unit_codes, "c": cell_codes}).value_counts().reset_index(name="n")
    primary = pairs.sort_values(["u", "n", "c"], ascending=[True, False, True]).drop_duplicates("u")
    unit_stratum = primary.set_index("u")["c"].reindex(range(n_units)).to_numpy()
    unit_weight = np.bincount(unit_codes, minlength=n_units)
    unit_split = np.empty(n_units, dtype=np.int64)
    cells = ds.cells()
    for code in np.unique(unit_stratum):
        units = np.flatnonzero(unit_stratum == code)
        units = units[_stratum_rng(int(seed), str(cells[code])).permutation(len(units))]
        unit_split[units] = _deal(unit_weight[units].tolist(), fr)
    row_split = unit_split[unit_codes] if n else np.empty(0, dtype=np.int64)
    return {name: np.flatnonzero(row_split == k).astype(np.int64) for k, name in enumerate(SPLIT_NAMES)}
