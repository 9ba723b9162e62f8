"""Minority gap and gap closure (issue #12): which group is behind, by how much, and how much of that gap a training
set closes compared with real minority data.

Definitions (the evaluation report's ``definitions.closure`` repeats them):

- **minority** of an attribute: the value with the fewest real *training* images (ties → the first in natural order),
  unless the caller names one (:func:`choose_minority`).
- **minority gap** of one classifier on one test view: accuracy of every other group pooled − accuracy of the
  minority (:func:`minority_gap`). Positive = the minority is behind. On a counterfactual view, where every content
  is rendered once in every group, the pooled accuracy is the mean over the other groups and the gap is the mean
  paired difference per content.
- **worst–best gap**: max over groups − min over groups of the group accuracy (:func:`worst_best_gap`).
- **gap closure** of a row: ``(B − R) / (B − O)`` (:func:`gap_closure`), with ``B`` the Base row's mean gap over its
  classifier seeds, ``O`` the oracle row's, and ``R`` the row's mean over generator replicates of the mean over
  classifier seeds. 1 = the row closes the gap as much as real minority images do; 0 = no change; < 0 = wider gap.
- **CI**: a hierarchical percentile bootstrap. Each resample draws the Base seeds (with replacement), then the oracle
  seeds, then the row's generator replicates (with replacement) and, within each drawn replicate, its classifier
  seeds, and recomputes the closure. Resamples whose ``B* − O*`` is not positive are skipped and counted. Test images
  are not resampled (the per-seed fairness reports carry row-level CIs).
- Closure is **undefined** (``value`` None, with a ``reason``) when there is no oracle, a gap is undefined, or
  ``B − O`` is not clearly positive: its own bootstrap CI reaches 0 or below (the oracle does not close the gap, so
  the benchmark cannot show an effect).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from fairsample.core.errors import ConfigError
from fairsample.evaluation.fairness_bootstrap import _check_resampling, _percentile_ci

__all__ = [
    "BOOTSTRAP_METHOD",
    "DEFINITIONS",
    "choose_minority",
    "closure_difference",
    "gap_closure",
    "gap_difference",
    "mean_ci",
    "minority_gap",
    "worst_best_gap",
]

#: how the closure CIs are drawn (stored in every closure block)
BOOTSTRAP_METHOD = (
    "hierarchical percentile bootstrap: Base seeds, oracle seeds, then generator replicates with replacement and "
    "classifier seeds within each drawn replicate; resamples with B* - O* <= 0 skipped"
)

#: what the report's gap quantities mean (``definitions.closure`` of the evaluation report)
DEFINITIONS: dict[str, str] = {
    "minority": "per attribute, the value with the fewest real training images (ties: first in natural order), "
    "unless given (minority=, CLI --minority)",
    "minority_gap": "accuracy of every other group pooled minus accuracy of the minority group, per classifier run "
    "and view; positive = the minority is behind. On the counterfactual view every content is rendered once in every "
    "group, so it is the mean paired difference per content",
    "worst_best_gap": "max minus min over groups of the group accuracy",
    "gap_closure": "(B - R) / (B - O): B = Base's mean minority gap over its classifier seeds, O = the oracle's, R = "
    "the row's mean over generator replicates of the mean over classifier seeds; 1 = as much as real held-out "
    "minority images close, 0 = no change, < 0 = wider gap",
    "undefined": "closure is null (with a reason) without a Base or oracle row, when a gap is undefined, or when "
    "B - O is not clearly positive (its bootstrap CI reaches 0): the oracle does not close the gap, so the benchmark "
    "cannot show an effect",
    "ci": "95 % percentile intervals of the " + BOOTSTRAP_METHOD + "; test images are not resampled",
    "between_generator_sd": "sd (ddof=1) of the row gap's replicate means (null with one replicate)",
    "within_seed_sd": "pooled sd (ddof=1) of the row gap over classifier seeds within each replicate",
    "vs_reference": "closure of the row minus closure of the reference row, both from each resample's shared Base "
    "and oracle draws; a difference counts only if its CI excludes 0",
}

_NO_COUNTS = "`counts` is empty; give the number of real training images of every attribute value."
_LENGTHS = "`y_true`, `y_pred` and `groups` must have one entry per image, got {a}, {b} and {c}."
_NO_ORACLE = "no oracle row: pass oracle= (CLI --oracle) to define the gap closure"
_NO_BASE_ROW = "no Base row: the real_only protocol was not run"
_NO_BASE = "the Base gap is undefined on this view (no finite per-seed value)"
_NO_ORACLE_GAP = "the oracle gap is undefined on this view (no finite per-seed value)"
_NO_ROW = "the row's gap is undefined on this view (no finite per-seed value)"
_NOT_CLOSABLE = (
    "the oracle does not close the gap: Base gap - oracle gap = {d:.3f} (CI {lo:.3f} to {hi:.3f}) is not clearly "
    "positive, so the benchmark cannot show an effect"
)
_NO_REFERENCE = "the reference row's gap is undefined on this view (no finite per-seed value)"


# ------------------------------------------------------------------------------------------------ per classifier


def choose_minority(counts: Mapping[str, int]) -> str:
    """The attribute value with the fewest images; ties go to the first value in natural order.

    Args:
        counts: ``{value: real training images}``.

    Returns:
        The minority value.

    Raises:
        ConfigError: ``counts`` is empty.

    Example:
        >>> choose_minority({"light": 400, "medium": 250, "dark": 60})
        'dark'
    """
    from fairsample.data.tables import natural_key

    if not counts:
        raise ConfigError(_NO_COUNTS)
    order = sorted(counts, key=lambda v: (counts[v], natural_key(str(v))))
    return str(order[0])


def _correct(y_true: ArrayLike, y_pred: ArrayLike, groups: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(N,) bool correctness and (N,) str groups, lengths checked."""
    yt, yp = np.asarray(y_true, dtype=object), np.asarray(y_pred, dtype=object)
    g = np.asarray([str(v) for v in np.asarray(groups, dtype=object).tolist()], dtype=object)
    if not len(yt) == len(yp) == len(g):
        raise ConfigError(_LENGTHS.format(a=len(yt), b=len(yp), c=len(g)))
    return yt == yp, g


def minority_gap(y_true: ArrayLike, y_pred: ArrayLike, groups: ArrayLike, minority: str) -> float:
    """Accuracy of every other group pooled − accuracy of the minority group.

    Args:
        y_true: ``(N,)`` true labels.
        y_pred: ``(N,)`` predicted labels.
        groups: ``(N,)`` attribute value of each image (compared as text).
        minority: the minority value.

    Returns:
        The gap in [-1, 1]; NaN when the minority or every other group has no image.

    Example:
        >>> minority_gap(["a", "a", "b", "b"], ["a", "b", "b", "b"], ["dark", "dark", "light", "light"], "dark")
        0.5
    """
    correct, g = _correct(y_true, y_pred, groups)
    m = g == str(minority)
    if not m.any() or m.all():
        return float("nan")
    return float(correct[~m].mean() - correct[m].mean())


def worst_best_gap(y_true: ArrayLike, y_pred: ArrayLike, groups: ArrayLike) -> float:
    """max − min over groups of the group accuracy; NaN with fewer than 2 groups.

    Example:
        >>> worst_best_gap([1, 1, 1, 1, 1, 1], [1, 0, 1, 1, 0, 0], ["a", "a", "b", "b", "c", "c"])
        1.0
    """
    correct, g = _correct(y_true, y_pred, groups)
    values = [float(correct[g == v].mean()) for v in set(g.tolist())]
    return float(max(values) - min(values)) if len(values) >= 2 else float("nan")


# ------------------------------------------------------------------------------------------------- bootstrap


def _finite(values: Sequence[float | None] | None) -> np.ndarray:
    """The finite values as float64 (None / NaN dropped)."""
    if values is None:
        return np.zeros(0)
    out = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return np.asarray(out, dtype=np.float64)


def _replicates(row: Sequence[Sequence[float | None]]) -> list[np.ndarray]:
    """Finite values per replicate; replicates without any are dropped."""
    reps = [_finite(values) for values in row]
    return [r for r in reps if r.size]


def _flat_means(rng: np.random.Generator, values: np.ndarray, n: int) -> np.ndarray:
    """(n,) means of seeds drawn with replacement."""
    return values[rng.integers(0, len(values), size=(n, len(values)))].mean(axis=1)


def _hier_means(rng: np.random.Generator, reps: list[np.ndarray], n: int) -> np.ndarray:
    """(n,) means over replicates drawn with replacement of the means over their seeds drawn with replacement."""
    sizes = np.array([len(r) for r in reps])
    width = int(sizes.max())
    table = np.full((len(reps), width), np.nan)
    for j, r in enumerate(reps):
        table[j, : len(r)] = r
    picks = rng.integers(0, len(reps), size=(n, len(reps)))  # 1. replicates
    k = sizes[picks]
    seeds = np.floor(rng.random((n, len(reps), width)) * k[..., None]).astype(np.int64)  # 2. seeds within each
    values = table[picks[..., None], seeds]
    mask = np.arange(width) < k[..., None]
    return (np.where(mask, values, 0.0).sum(axis=2) / k).mean(axis=1)


def _ci(values: np.ndarray, confidence: float) -> list[float] | None:
    finite = values[np.isfinite(values)]
    return list(_percentile_ci(finite.tolist(), confidence)) if finite.size else None


def mean_ci(
    values: Sequence[float | None], *, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """Mean, sd (ddof=1) and percentile bootstrap CI of the mean of per-seed values (seeds drawn with replacement).

    Args:
        values: per-seed values; None / NaN are left out.
        n_resamples: bootstrap resamples (>= 1).
        confidence: CI mass in (0, 1).
        seed: ``np.random.default_rng`` seed.

    Returns:
        ``{"mean", "sd", "ci": [low, high], "n"}``; ``mean``/``ci`` None without finite values, ``sd`` None below 2.

    Example:
        >>> out = mean_ci([0.2, 0.3, 0.4], n_resamples=500)
        >>> round(out["mean"], 3), out["n"], out["ci"][0] < 0.3 < out["ci"][1]
        (0.3, 3, True)
    """
    _check_resampling(n_resamples, confidence)
    v = _finite(values)
    if not v.size:
        return {"mean": None, "sd": None, "ci": None, "n": 0}
    boot = _flat_means(np.random.default_rng(seed), v, n_resamples)
    return {
        "mean": float(v.mean()),
        "sd": float(v.std(ddof=1)) if v.size > 1 else None,
        "ci": _ci(boot, confidence),
        "n": int(v.size),
    }


def _row_stats(reps: list[np.ndarray], boot: np.ndarray | None, confidence: float) -> dict[str, Any]:
    """The row gap: mean of replicate means, CI, between-generator and within-seed sd, per-replicate values."""
    means = np.array([r.mean() for r in reps])
    dof = sum(len(r) - 1 for r in reps)
    within = math.sqrt(sum(float(((r - r.mean()) ** 2).sum()) for r in reps) / dof) if dof > 0 else None
    return {
        "mean": float(means.mean()),
        "ci": None if boot is None else _ci(boot, confidence),
        "between_generator_sd": float(means.std(ddof=1)) if len(reps) > 1 else None,
        "within_seed_sd": within,
        "n_replicates": len(reps),
        "n_values": int(sum(len(r) for r in reps)),
        "by_replicate": [
            {
                "mean": float(r.mean()),
                "sd": float(r.std(ddof=1)) if len(r) > 1 else None,
                "n": len(r),
                "values": r.tolist(),
            }
            for r in reps
        ],
    }


def gap_difference(
    base: Sequence[float | None] | None,
    oracle: Sequence[float | None] | None,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Base gap, oracle gap and ``B − O`` with bootstrap CIs: can this benchmark show a closure at all?

    Uses the same draws as :func:`gap_closure` with the same ``seed`` (Base first, then the oracle), so its CIs equal
    the ``base_gap``, ``oracle_gap`` and ``denominator`` CIs of every closure block.

    Args:
        base: the Base row's gap per classifier seed (None: no Base row).
        oracle: the oracle row's gap per classifier seed (None: no oracle row).
        n_resamples, confidence, seed: bootstrap settings.

    Returns:
        ``{"base_gap", "oracle_gap": {"mean", "sd", "ci", "n"} | None, "difference": {"mean", "ci"} | None,
        "closable": bool, "reason": str | None}``.

    Example:
        >>> d = gap_difference([0.31, 0.30, 0.29], [0.11, 0.10, 0.09])
        >>> round(d["difference"]["mean"], 3), d["closable"], d["reason"]
        (0.2, True, None)
    """
    _check_resampling(n_resamples, confidence)
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"base_gap": None, "oracle_gap": None, "difference": None, "closable": False}
    boots = []
    for key, values in (("base_gap", base), ("oracle_gap", oracle)):
        v = _finite(values)
        boot = _flat_means(rng, v, n_resamples) if v.size else None
        boots.append(boot)
        if values is not None:
            out[key] = {
                "mean": float(v.mean()) if v.size else None,
                "sd": float(v.std(ddof=1)) if v.size > 1 else None,
                "ci": None if boot is None else _ci(boot, confidence),
                "n": int(v.size),
            }
    b, o = _finite(base), _finite(oracle)
    if boots[0] is not None and boots[1] is not None:
        out["difference"] = {"mean": float(b.mean() - o.mean()), "ci": _ci(boots[0] - boots[1], confidence)}
    reason = _NO_BASE_ROW if base is None else _undefined(oracle is None, b, o, [b], out["difference"])
    out["closable"] = reason is None
    out["reason"] = reason
    return out


def gap_closure(
    base: Sequence[float | None] | None,
    oracle: Sequence[float | None] | None,
    row: Sequence[Sequence[float | None]],
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Gap closure ``(B − R) / (B − O)`` of one row, with a hierarchical bootstrap CI (module docstring).

    Args:
        base: the Base row's minority gap per classifier seed (None: no Base row; closure undefined).
        oracle: the oracle row's gap per classifier seed, or None (closure undefined, row statistics still given).
        row: the row's gap per generator replicate, per classifier seed: ``[[r1s0, r1s1, ...], [r2s0, ...]]``.
            None / NaN values are left out; a replicate without a finite value is dropped.
        n_resamples: bootstrap resamples (>= 1; 2000 by default).
        confidence: CI mass in (0, 1).
        seed: ``np.random.default_rng`` seed (draw order: Base, oracle, row).

    Returns:
        A JSON-safe dict: ``value`` (None when undefined), ``ci`` ([low, high] or None), ``defined``, ``reason``
        (None or why it is undefined); ``base_gap`` and ``oracle_gap`` (``{"mean", "ci", "n"}``); ``row_gap``
        (``mean``, ``ci``, ``between_generator_sd`` (sd of the replicate means, None with 1 replicate),
        ``within_seed_sd`` (pooled sd of the seeds within replicates), ``n_replicates``, ``n_values``,
        ``by_replicate``: ``[{"mean", "sd", "n", "values"}]``); ``reduction`` (``B − R``: ``{"mean", "ci"}``);
        ``denominator`` (``B − O``: ``{"mean", "ci"}``); ``bootstrap`` (``n_resamples``, ``n_valid``,
        ``confidence``, ``seed``, ``method``).

    Raises:
        ConfigError: bad ``n_resamples`` or ``confidence``.

    Example:
        >>> out = gap_closure([0.31, 0.30, 0.29], [0.11, 0.10, 0.09], [[0.21, 0.20, 0.19], [0.2, 0.2, 0.2]])
        >>> round(out["value"], 3), out["defined"], out["ci"][0] < 0.5 < out["ci"][1]
        (0.5, True, True)
        >>> gap_closure([0.3, 0.3], [0.3, 0.31], [[0.2, 0.2]])["reason"][:33]
        'the oracle does not close the gap'
    """
    _check_resampling(n_resamples, confidence)
    b, o, reps = _finite(base), _finite(oracle), _replicates(row)
    out: dict[str, Any] = {
        "value": None,
        "ci": None,
        "defined": False,
        "reason": None,
        "base_gap": {"mean": float(b.mean()) if b.size else None, "ci": None, "n": int(b.size)},
        "oracle_gap": None
        if oracle is None
        else {"mean": float(o.mean()) if o.size else None, "ci": None, "n": o.size},
        "row_gap": _row_stats(reps, None, confidence) if reps else None,
        "reduction": None,
        "denominator": None,
        "bootstrap": {
            "n_resamples": n_resamples,
            "n_valid": 0,
            "confidence": confidence,
            "seed": seed,
            "method": BOOTSTRAP_METHOD,
        },
    }
    rng = np.random.default_rng(seed)
    b_boot = _flat_means(rng, b, n_resamples) if b.size else None
    o_boot = _flat_means(rng, o, n_resamples) if o.size else None
    r_boot = _hier_means(rng, reps, n_resamples) if reps else None
    if b_boot is not None:
        out["base_gap"]["ci"] = _ci(b_boot, confidence)
    if o_boot is not None:
        out["oracle_gap"]["ci"] = _ci(o_boot, confidence)
    if r_boot is not None:
        out["row_gap"] = _row_stats(reps, r_boot, confidence)
    if b_boot is not None and r_boot is not None:
        out["reduction"] = {"mean": float(b.mean()) - out["row_gap"]["mean"], "ci": _ci(b_boot - r_boot, confidence)}
    if b_boot is not None and o_boot is not None:
        out["denominator"] = {"mean": float(b.mean() - o.mean()), "ci": _ci(b_boot - o_boot, confidence)}
    # 1. why it may be undefined
    reason = _NO_BASE_ROW if base is None else _undefined(oracle is None, b, o, reps, out["denominator"])
    if reason is not None:
        out["reason"] = reason
        return out
    # 2. point estimate and the bootstrap distribution of the closure
    assert b_boot is not None and o_boot is not None and r_boot is not None
    den = b_boot - o_boot
    ok = den > 0
    out["value"] = float((b.mean() - out["row_gap"]["mean"]) / (b.mean() - o.mean()))
    out["ci"] = _ci((b_boot[ok] - r_boot[ok]) / den[ok], confidence)
    out["defined"] = True
    out["bootstrap"]["n_valid"] = int(ok.sum())
    return out


def _undefined(
    no_oracle: bool, b: np.ndarray, o: np.ndarray, reps: list[np.ndarray], den: Mapping[str, Any] | None
) -> str | None:
    """The reason the closure is undefined, or None."""
    if no_oracle:
        return _NO_ORACLE
    if not b.size:
        return _NO_BASE
    if not o.size:
        return _NO_ORACLE_GAP
    if not reps:
        return _NO_ROW
    assert den is not None
    lo, hi = den["ci"]
    if den["mean"] <= 0 or lo <= 0:
        return _NOT_CLOSABLE.format(d=den["mean"], lo=lo, hi=hi)
    return None


def closure_difference(
    base: Sequence[float | None] | None,
    oracle: Sequence[float | None] | None,
    row: Sequence[Sequence[float | None]],
    reference: Sequence[Sequence[float | None]],
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Closure of ``row`` minus closure of ``reference`` (e.g. a fair method vs vanilla), with a bootstrap CI.

    Both closures share each resample's Base and oracle draws, so the difference is ``(R_ref − R_row) / (B − O)``;
    the row and the reference each resample their own replicates and seeds (draw order: Base, oracle, row,
    reference). "Beats the reference" needs a CI that excludes 0.

    Args:
        base, oracle, row: as in :func:`gap_closure`.
        reference: the reference row's gaps per replicate, per seed.
        n_resamples, confidence, seed: bootstrap settings.

    Returns:
        ``{"value", "ci", "defined", "reason", "excludes_zero", "bootstrap"}`` (``value``/``ci`` None when
        undefined; ``excludes_zero`` None then).

    Example:
        >>> d = closure_difference([0.3, 0.31, 0.29], [0.1, 0.11, 0.09], [[0.1, 0.11], [0.1, 0.09]],
        ...                        [[0.2, 0.21], [0.2, 0.19]])
        >>> round(d["value"], 3), d["excludes_zero"]
        (0.5, True)
    """
    _check_resampling(n_resamples, confidence)
    b, o, reps, refs = _finite(base), _finite(oracle), _replicates(row), _replicates(reference)
    out: dict[str, Any] = {
        "value": None,
        "ci": None,
        "defined": False,
        "reason": None,
        "excludes_zero": None,
        "bootstrap": {
            "n_resamples": n_resamples,
            "n_valid": 0,
            "confidence": confidence,
            "seed": seed,
            "method": BOOTSTRAP_METHOD + "; the reference row is drawn after the row, sharing Base and oracle",
        },
    }
    rng = np.random.default_rng(seed)
    b_boot = _flat_means(rng, b, n_resamples) if b.size else None
    o_boot = _flat_means(rng, o, n_resamples) if o.size else None
    r_boot = _hier_means(rng, reps, n_resamples) if reps else None
    f_boot = _hier_means(rng, refs, n_resamples) if refs else None
    den = None
    if b_boot is not None and o_boot is not None:
        den = {"mean": float(b.mean() - o.mean()), "ci": _ci(b_boot - o_boot, confidence)}
    reason = _NO_BASE_ROW if base is None else _undefined(oracle is None, b, o, reps, den)
    if reason is None and f_boot is None:
        reason = _NO_REFERENCE
    if reason is not None:
        out["reason"] = reason
        return out
    assert b_boot is not None and o_boot is not None and r_boot is not None and f_boot is not None
    d = b_boot - o_boot
    ok = d > 0
    r_mean = float(np.mean([r.mean() for r in reps]))
    f_mean = float(np.mean([r.mean() for r in refs]))
    out["value"] = (f_mean - r_mean) / float(b.mean() - o.mean())
    out["ci"] = _ci((f_boot[ok] - r_boot[ok]) / d[ok], confidence)
    out["defined"] = True
    out["excludes_zero"] = bool(out["ci"] is not None and (out["ci"][0] > 0 or out["ci"][1] < 0))
    out["bootstrap"]["n_valid"] = int(ok.sum())
    return out
