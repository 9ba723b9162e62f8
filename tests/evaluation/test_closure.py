"""Minority gap, gap closure and its hierarchical bootstrap (issue #12): hand-checked values on synthetic inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fairsample.core.errors import ConfigError
from fairsample.evaluation.closure import (
    _NO_BASE_ROW,
    _NO_ORACLE,
    choose_minority,
    closure_difference,
    gap_closure,
    gap_difference,
    mean_ci,
    minority_gap,
    worst_best_gap,
)

BASE = [0.31, 0.30, 0.29]
ORACLE = [0.11, 0.10, 0.09]


def test_minority_is_the_smallest_group_ties_in_natural_order():
    assert choose_minority({"light": 302, "medium": 111, "dark": 18}) == "dark"
    assert choose_minority({"b": 5, "a": 5, "c": 9}) == "a"
    assert choose_minority({"10": 3, "2": 3}) == "2"
    with pytest.raises(ConfigError):
        choose_minority({})


def test_minority_gap_and_worst_best_gap_by_hand():
    y = ["1"] * 10
    groups = ["dark"] * 4 + ["light"] * 4 + ["medium"] * 2
    pred = ["1", "0", "0", "0"] + ["1", "1", "1", "0"] + ["1", "1"]  # dark 1/4, light 3/4, medium 2/2
    assert minority_gap(y, pred, groups, "dark") == pytest.approx(5 / 6 - 1 / 4)  # others pooled: 5 of 6
    assert worst_best_gap(y, pred, groups) == pytest.approx(1.0 - 0.25)
    assert math.isnan(minority_gap(y, pred, groups, "absent"))
    assert math.isnan(minority_gap(["1"], ["1"], ["dark"], "dark"))  # no other group
    with pytest.raises(ConfigError, match="one entry per image"):
        minority_gap(y, pred[:3], groups, "dark")


def test_closure_hand_example():
    """Base gap 0.3, oracle 0.1, row 0.2 -> 0.5; constant seeds make every CI a point."""
    out = gap_closure([0.3] * 3, [0.1] * 3, [[0.2] * 3, [0.2] * 3], n_resamples=200)
    assert out["defined"] and out["reason"] is None
    assert out["value"] == pytest.approx(0.5)
    assert out["ci"] == pytest.approx([0.5, 0.5])
    assert out["base_gap"]["mean"] == pytest.approx(0.3) and out["oracle_gap"]["mean"] == pytest.approx(0.1)
    assert out["row_gap"]["mean"] == pytest.approx(0.2) and out["denominator"]["mean"] == pytest.approx(0.2)
    assert out["reduction"]["mean"] == pytest.approx(0.1)
    assert out["row_gap"]["n_replicates"] == 2 and out["row_gap"]["n_values"] == 6
    assert out["bootstrap"]["n_valid"] == 200


def test_closure_uses_replicate_means_and_hand_sds():
    row = [[0.18, 0.20, 0.22], [0.26, 0.28]]  # unequal seed counts
    out = gap_closure(BASE, ORACLE, row, n_resamples=500, seed=3)
    r = (0.20 + 0.27) / 2
    assert out["value"] == pytest.approx((0.30 - r) / (0.30 - 0.10))
    stats = out["row_gap"]
    assert stats["mean"] == pytest.approx(r)
    assert stats["between_generator_sd"] == pytest.approx(np.std([0.20, 0.27], ddof=1))
    within = math.sqrt(((0.02**2 + 0.0 + 0.02**2) + (0.01**2 + 0.01**2)) / (2 + 1))  # pooled, ddof 1 per replicate
    assert stats["within_seed_sd"] == pytest.approx(within)
    assert [b["mean"] for b in stats["by_replicate"]] == pytest.approx([0.20, 0.27])
    assert out["ci"][0] < out["value"] < out["ci"][1]
    assert gap_closure(BASE, ORACLE, row, n_resamples=500, seed=3) == out  # deterministic in the seed


def test_bootstrap_resamples_generators_not_only_seeds():
    """Two replicates with no seed noise: the row-gap CI spans the replicate means (replicates are resampled)."""
    out = gap_closure(BASE, ORACLE, [[0.1] * 3, [0.3] * 3], n_resamples=2000)
    assert out["row_gap"]["ci"] == pytest.approx([0.1, 0.3])
    assert out["row_gap"]["within_seed_sd"] == pytest.approx(0.0)
    one = gap_closure(BASE, ORACLE, [[0.2] * 3], n_resamples=2000)  # one generator: no generator variation
    assert one["row_gap"]["ci"] == pytest.approx([0.2, 0.2]) and one["row_gap"]["between_generator_sd"] is None
    assert out["ci"][1] - out["ci"][0] > one["ci"][1] - one["ci"][0]


def test_closure_is_undefined_when_the_oracle_does_not_close_the_gap():
    out = gap_closure([0.30, 0.31, 0.29], [0.30, 0.25, 0.33], [[0.2, 0.21]], n_resamples=500)
    assert out["value"] is None and out["ci"] is None and not out["defined"]
    assert out["reason"].startswith("the oracle does not close the gap")
    assert out["denominator"]["ci"][0] <= 0 and out["row_gap"]["mean"] == pytest.approx(0.205)
    worse = gap_closure([0.2] * 2, [0.3] * 2, [[0.2]], n_resamples=50)  # oracle wider than Base
    assert worse["value"] is None and "not clearly positive" in worse["reason"]


def test_closure_without_oracle_or_base_keeps_the_row_statistics():
    no_oracle = gap_closure(BASE, None, [[0.2, 0.21], [0.25, 0.24]], n_resamples=100)
    assert no_oracle["reason"] == _NO_ORACLE and no_oracle["oracle_gap"] is None
    assert no_oracle["row_gap"]["between_generator_sd"] is not None and no_oracle["reduction"] is not None
    no_base = gap_closure(None, ORACLE, [[0.2]], n_resamples=100)
    assert no_base["reason"] == _NO_BASE_ROW and no_base["value"] is None


def test_undefined_seed_values_are_left_out():
    out = gap_closure([0.3, None, float("nan")], [0.1, 0.1], [[0.2, None], [None], [0.2]], n_resamples=100)
    assert out["value"] == pytest.approx(0.5)
    assert out["base_gap"]["n"] == 1 and out["row_gap"]["n_replicates"] == 2  # the all-None replicate is dropped
    empty = gap_closure(BASE, ORACLE, [[None, float("nan")]], n_resamples=100)
    assert empty["value"] is None and "row's gap is undefined" in empty["reason"] and empty["row_gap"] is None


def test_gap_difference_matches_the_closure_draws():
    diff = gap_difference(BASE, ORACLE, n_resamples=400, seed=7)
    closure = gap_closure(BASE, ORACLE, [[0.2, 0.22]], n_resamples=400, seed=7)
    assert diff["closable"] and diff["reason"] is None
    assert (
        diff["base_gap"]["ci"] == closure["base_gap"]["ci"] and diff["oracle_gap"]["ci"] == closure["oracle_gap"]["ci"]
    )
    assert diff["difference"] == closure["denominator"]
    assert diff["base_gap"]["sd"] == pytest.approx(0.01)
    flat = gap_difference([0.3, 0.3], [0.3, 0.31], n_resamples=100)
    assert not flat["closable"] and flat["reason"].startswith("the oracle does not close the gap")
    assert gap_difference(BASE, None, n_resamples=10)["reason"] == _NO_ORACLE


def test_closure_difference_against_a_reference_row():
    row, ref = [[0.10, 0.11], [0.10, 0.09]], [[0.20, 0.21], [0.20, 0.19]]
    d = closure_difference(BASE, ORACLE, row, ref, n_resamples=1000)
    assert d["value"] == pytest.approx((0.20 - 0.10) / 0.20)
    assert d["defined"] and d["excludes_zero"] is True and d["ci"][0] > 0
    a = gap_closure(BASE, ORACLE, row, n_resamples=10)["value"]
    b = gap_closure(BASE, ORACLE, ref, n_resamples=10)["value"]
    assert d["value"] == pytest.approx(a - b)
    same = closure_difference(BASE, ORACLE, [[0.2, 0.1], [0.3, 0.2]], [[0.2, 0.1], [0.3, 0.2]], n_resamples=500)
    assert same["value"] == pytest.approx(0.0) and same["excludes_zero"] is False
    undefined = closure_difference(BASE, BASE, row, ref, n_resamples=100)
    assert undefined["value"] is None and undefined["excludes_zero"] is None


def test_mean_ci_and_option_checks():
    out = mean_ci([0.2, None, 0.4], n_resamples=300)
    assert out["mean"] == pytest.approx(0.3) and out["n"] == 2 and 0.2 <= out["ci"][0] <= out["ci"][1] <= 0.4
    assert mean_ci([None]) == {"mean": None, "sd": None, "ci": None, "n": 0}
    with pytest.raises(ConfigError, match="n_resamples"):
        gap_closure(BASE, ORACLE, [[0.2]], n_resamples=0)
    with pytest.raises(ConfigError, match="confidence"):
        gap_closure(BASE, ORACLE, [[0.2]], confidence=1.5)
