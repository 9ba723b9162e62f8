"""split_indices: deterministic, stratified by cell, grouped by patient, or taken from a split column."""

import re

import numpy as np
import pandas as pd
import pytest

from fairsample.core.errors import ConfigError, DataError
from fairsample.data import DatasetSpec, FolderDataset, split_indices
from fairsample.data.splits import _BAD_FRACTIONS, _BAD_SEED, _BAD_SPLIT_VALUE


def make_ds(counts, *, patients=None, extra=None, spec=None):
    rows = [(tone, label) for (tone, label), n in counts.items() for _ in range(n)]
    frame = pd.DataFrame(
        {
            "file_name": [f"{i}.png" for i in range(len(rows))],
            "tone": [t for t, _ in rows],
            "label": [y for _, y in rows],
        }
    )
    if patients is not None:
        frame["pid"] = patients
    for k, v in (extra or {}).items():
        frame[k] = v
    return FolderDataset(".", spec or DatasetSpec(groups=("tone",), patient_col="pid" if patients else None), frame)


COUNTS = {("light", "0"): 400, ("light", "1"): 250, ("dark", "0"): 30, ("dark", "1"): 12, ("dark", "2"): 3}


def test_partition_and_determinism():
    ds = make_ds(COUNTS)
    a, b = split_indices(ds, seed=3), split_indices(ds, seed=3)
    assert list(a) == ["train", "val", "test"]
    for k in a:
        assert np.array_equal(a[k], b[k]) and a[k].dtype == np.int64
        assert np.all(np.diff(a[k]) > 0)
    together = np.concatenate(list(a.values()))
    assert np.array_equal(np.sort(together), np.arange(len(ds)))
    c = split_indices(ds, seed=4)
    assert not np.array_equal(a["test"], c["test"])


def test_stratified_counts_per_cell():
    ds = make_ds(COUNTS)
    parts = split_indices(ds, seed=0)
    cells = np.array([str(c) for c in ds.cell_ids()])
    got = {k: pd.Series(cells[v]).value_counts().to_dict() for k, v in parts.items()}
    assert got["train"]["tone=light,label=0"] == 320 and got["val"]["tone=light,label=0"] == 40
    assert (got["train"]["tone=dark,label=1"], got["val"]["tone=dark,label=1"], got["test"]["tone=dark,label=1"]) == (
        10,
        1,
        1,
    )
    for k in ("train", "val", "test"):
        assert got[k]["tone=dark,label=2"] == 1  # a 3-image cell reaches every split


def test_changing_one_cell_keeps_other_cells_split():
    base = split_indices(make_ds(COUNTS), seed=0)
    more = dict(COUNTS)
    more[("dark", "2")] = 9  # the last cell, so row indices of the others do not move
    grown = split_indices(make_ds(more), seed=0)
    n_before = sum(COUNTS.values()) - 3
    for k in base:
        assert np.array_equal(base[k][base[k] < n_before], grown[k][grown[k] < n_before])


def test_patients_never_cross_splits():
    rng = np.random.default_rng(0)
    counts = {("light", "0"): 300, ("light", "1"): 200, ("dark", "0"): 60, ("dark", "1"): 40}
    n = sum(counts.values())
    patients = [f"p{i}" for i in rng.integers(0, 180, size=n)]
    ds = make_ds(counts, patients=patients)
    parts = split_indices(ds, seed=1)
    pid = ds.frame["pid"].to_numpy()
    sets = {k: set(pid[v]) for k, v in parts.items()}
    assert (
        not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    )
    shares = [len(parts[k]) / n for k in ("train", "val", "test")]
    assert shares == pytest.approx([0.8, 0.1, 0.1], abs=0.03)


def test_blank_patient_ids_are_separate_units():
    ds = make_ds({("a", "0"): 10}, patients=[""] * 10)
    assert [len(v) for v in split_indices(ds).values()] == [8, 1, 1]


def test_split_column_is_used():
    values = ["train", "TRAIN", "validation", "valid", "test", "Test", "dev", "training"]
    spec = DatasetSpec(groups=("tone",), split="split")
    ds = make_ds({("a", "0"): 8}, extra={"split": values}, spec=spec)
    parts = split_indices(ds, fractions=(1, 0, 0))
    assert {k: v.tolist() for k, v in parts.items()} == {"train": [0, 1, 7], "val": [2, 3, 6], "test": [4, 5]}


def test_bad_split_value():
    spec = DatasetSpec(groups=("tone",), split="split")
    ds = make_ds({("a", "0"): 3}, extra={"split": ["train", "holdout", "x"]}, spec=spec)
    allowed = ["dev", "test", "testing", "train", "training", "val", "valid", "validation"]
    msg = _BAD_SPLIT_VALUE.format(rows="2 rows", have="have", column="split", row=2, value="holdout", allowed=allowed)
    with pytest.raises(DataError, match=re.escape(msg)):
        split_indices(ds)


def test_zero_fraction_split_is_empty():
    parts = split_indices(make_ds({("a", "0"): 10, ("b", "1"): 3}), fractions=(0.9, 0.0, 0.1))
    assert len(parts["val"]) == 0 and [len(parts["train"]), len(parts["test"])] == [11, 2]


@pytest.mark.parametrize("fractions", [(0.8, 0.1), (0.8, 0.3, 0.1), (1.2, -0.1, -0.1), ("a", 0, 1)])
def test_bad_fractions(fractions):
    with pytest.raises(ConfigError, match=re.escape(_BAD_FRACTIONS.format(value=fractions))):
        split_indices(make_ds({("a", "0"): 3}), fractions=fractions)


@pytest.mark.parametrize("seed", [-1, 1.5, True])
def test_bad_seed(seed):
    with pytest.raises(ConfigError, match=re.escape(_BAD_SEED.format(value=seed))):
        split_indices(make_ds({("a", "0"): 3}), seed=seed)
