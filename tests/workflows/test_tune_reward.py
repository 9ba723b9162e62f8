"""The `fairdiffusion_perturbed` tuner (METHODS.md §4.3): per-group KID reward, paired held-out guard, reference."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from fairsample.core.errors import ConfigError, FairsampleWarning
from fairsample.evaluation.generative import kid
from fairsample.workflows.tune_perturbation import (
    _BAD_GUARD_INPUT,
    _BAD_REWARD_GROUPS,
    _SMALL_REFERENCE,
    _reference_rows,
    kid_gap,
    paired_guard,
)


class _MeanColour(nn.Module):
    """(B, 3, H, W) uint8 → (B, 3) mean colour in [0, 1]: a feature space where only brightness matters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().mean(dim=(2, 3)) / 255.0


def _tone(rng: np.random.Generator, n: int, lo: int, hi: int) -> np.ndarray:
    """n flat 8x8 images whose brightness is uniform in [lo, hi)."""
    level = rng.integers(lo, hi, size=(n, 1, 1, 1))
    return np.broadcast_to(level, (n, 8, 8, 3)).astype(np.uint8)


LIGHT, DARK = (170, 230), (30, 90)


def test_balanced_faithful_images_score_zero_against_an_imbalanced_reference():
    rng = np.random.default_rng(0)
    real = {"light": _tone(rng, 100, *LIGHT), "dark": _tone(rng, 20, *DARK)}  # 83 % / 17 %, like the demo
    faithful = {"light": _tone(rng, 40, *LIGHT), "dark": _tone(rng, 40, *DARK)}  # equal n, each group's own look
    r = kid_gap(real, faithful, features=_MeanColour(), lam=1.0)
    pooled, _ = kid(
        np.concatenate(list(real.values())),
        np.concatenate(list(faithful.values())),
        features=_MeanColour(),
        subset_size=40,
    )
    # the old reward's pooled term is pure composition mismatch; the per-group reward sees none of it
    assert pooled > 0.05
    assert abs(r["kid_mean"]) < 0.05 * pooled and r["kid_range"] < 0.05 * pooled and abs(r["reward"]) < 0.1 * pooled
    assert r["reward"] == pytest.approx(-(r["kid_mean"] + r["kid_range"]))
    # making the minority look like the majority brings the pooled KID down, and the per-group reward down too
    majority_look = {"light": faithful["light"], "dark": _tone(rng, 40, *LIGHT)}
    pooled_bad, _ = kid(
        np.concatenate(list(real.values())),
        np.concatenate(list(majority_look.values())),
        features=_MeanColour(),
        subset_size=40,
    )
    assert pooled_bad < pooled
    assert kid_gap(real, majority_look, features=_MeanColour())["reward"] < r["reward"] - 0.5 * pooled


def test_kid_gap_weights_the_range_by_lambda_and_needs_the_same_groups():
    rng = np.random.default_rng(1)
    real = {"light": _tone(rng, 30, *LIGHT), "dark": _tone(rng, 30, *DARK)}
    gen = {"light": _tone(rng, 20, *LIGHT), "dark": _tone(rng, 20, 60, 120)}  # dark drifts lighter
    r0, r2 = kid_gap(real, gen, features=_MeanColour(), lam=0.0), kid_gap(real, gen, features=_MeanColour(), lam=2.0)
    assert r0["kid_by_group"] == r2["kid_by_group"] and r0["kid_by_group"]["dark"] > r0["kid_by_group"]["light"]
    assert r0["reward"] == pytest.approx(-r0["kid_mean"])
    assert r2["reward"] == pytest.approx(-(r2["kid_mean"] + 2 * r2["kid_range"]))
    message = _BAD_REWARD_GROUPS.format(known=["dark", "light"], value=["light"])
    with pytest.raises(ConfigError, match=re.escape(message)):
        kid_gap(real, {"light": gen["light"]}, features=_MeanColour())


def test_guard_keeps_a_small_consistent_gain_that_the_sum_of_spreads_rejected():
    # held-out rewards vary a lot between seed sets (sd ≈ 0.07) but θ* beats θ = 0 by ≈ 0.03 on every one
    zero = np.array([-0.50, -0.62, -0.45, -0.58, -0.55, -0.41])
    star = zero + np.array([0.030, 0.025, 0.035, 0.028, 0.032, 0.027])
    g = paired_guard(zero, star, z=2.0)
    assert g.keep and g.mean == pytest.approx(0.0295) and g.se < 0.002
    assert g.reason.startswith("kept θ*: held-out gain 0.0295 ± 0.0015 (SE over 6 paired seed sets)")
    assert g.mean < zero.std() + star.std()  # a gain-vs-sum-of-spreads rule (the old guard) would keep zero
    doc = g.to_dict()
    assert doc["decision"] == "theta_star" and doc["differences"] == pytest.approx(list(star - zero))
    assert doc["zero"] == list(zero) and doc["theta_star"] == list(star) and doc["sets"] == 6 and doc["z"] == 2.0


def test_guard_rejects_an_inconsistent_or_negative_gain():
    zero = np.array([-0.50, -0.62, -0.45, -0.58, -0.55])
    noisy = paired_guard(zero, zero + np.array([0.05, -0.04, 0.03, -0.02, 0.01]))
    assert not noisy.keep and noisy.mean > 0 and noisy.mean < 2 * noisy.se
    within = f"kept zero offsets: held-out gain 0.0060 ± {noisy.se:.4f} is within 2 SE (SE over 5 paired seed sets)"
    assert noisy.reason == within
    worse = paired_guard(zero, zero - 0.01)
    assert not worse.keep and "is not positive" in worse.reason and worse.to_dict()["decision"] == "zero"
    assert not paired_guard(zero, zero).keep  # θ* identical to zero: no gain, SE 0


@pytest.mark.parametrize(("zero", "star", "n0", "n1"), [([0.1, 0.2], [0.1], 2, 1), ([0.1], [0.2], 1, 1)])
def test_guard_needs_two_equal_length_sets(zero, star, n0, n1):
    with pytest.raises(ConfigError, match=re.escape(_BAD_GUARD_INPUT.format(n0=n0, n1=n1, extra=""))):
        paired_guard(zero, star)
    with pytest.raises(ConfigError, match="non-finite"):
        paired_guard([0.1, float("nan")], [0.2, 0.3])


def test_a_small_validation_group_borrows_train_images_the_features_never_see(demo_dir):
    from fairsample.data.folder import load_folder
    from fairsample.data.splits import split_indices

    ds = load_folder(demo_dir)
    split = split_indices(ds, seed=0)
    tone = ds.frame["tone"].astype(str).to_numpy()
    groups = ["dark", "light", "medium"]
    need = 20
    short = [g for g in groups if (tone[split["val"]] == g).sum() + (tone[split["train"]] == g).sum() // 2 < need]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        rows, feature_rows, sizes = _reference_rows(ds, "tone", groups, min_reference=need, seed=0)
    assert [w.category for w in record] == [FairsampleWarning] * len(short)
    assert [str(w.message) for w in record] == [
        _SMALL_REFERENCE.format(
            attribute="tone", value=g, n=len(rows[g]), need=need, val=sizes[g]["val"], train=sizes[g]["train_held_out"]
        )
        for g in short
    ]
    for g in groups:
        val = np.asarray(split["val"])[tone[split["val"]] == g]
        assert set(val) <= set(rows[g]) and sizes[g]["val"] == len(val)
        borrowed = set(rows[g]) - set(val)
        assert len(borrowed) == sizes[g]["train_held_out"] and borrowed <= set(split["train"])
        assert not borrowed & set(feature_rows)  # reference images stay unseen by the feature network
        assert all(tone[i] == g for i in rows[g])
    assert sizes["dark"]["train_held_out"] > 0 and sizes["light"]["train_held_out"] == 0
    assert set(feature_rows) | {i for g in groups for i in rows[g]} >= set(split["train"])
    assert not set(feature_rows) & set(split["val"]) and not set(feature_rows) & set(split["test"])
