"""Equity-scaled metrics and accuracy ratios (METHODS.md §5.5, §5.9, §5.10): ``equity_scale``, ``es_acc``, ``essp``,
``nar``, ``pqd``.

ES-M sums |M − M_g| over groups instead of averaging, so an attribute with more groups is penalised more: never compare
ES values across attributes with a different number of groups. Per-group accuracy comes from fairlearn
``MetricFrame(sklearn accuracy_score)``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from fairsample.core.errors import ConfigError, FairsampleWarning
from fairsample.evaluation.fairness import (
    _check_option,
    _group_accuracy,
    _prepare,
    _selection_rates,
    _sum_abs,
    _targets,
)

_BAD_ALPHA = "`alpha` must be a finite number >= 0, got {value!r}."
_NAN_GROUPS = (
    "equity_scale: group(s) {groups} have an undefined (NaN) metric and are left out of the sum; ES values over "
    "different group sets are not comparable."
)
_NO_GROUPS = "equity_scale: no group has a defined metric; the result is NaN."
_ZERO_OVERALL = "equity_scale: `relative=True` divides by the overall metric, which is 0; the result is NaN."
_DELTA_DP = (
    "essp(delta='dp') is FairSkin's Acc / (1 + DP sum) and is not comparable with FairSeg-style ESSP (delta='acc'); "
    "report the option with the value."
)
_ZERO_MEAN = "nar: the mean group accuracy is 0; NAR is undefined (NaN)."
_ZERO_MAX = "pqd: every group has accuracy 0; PQD is undefined (NaN)."


def _per_group_values(per_group: Mapping[Any, float] | ArrayLike) -> tuple[list[Any], np.ndarray]:
    """Group names and (G,) float values of a mapping, Series or sequence (names = positions)."""
    if isinstance(per_group, Mapping):
        return list(per_group), np.array(list(per_group.values()), dtype=float)
    if isinstance(per_group, pd.Series):
        return per_group.index.tolist(), np.array(per_group, dtype=float)
    values = np.array(per_group, dtype=float).reshape(-1)
    return list(range(len(values))), values


def _check_alpha(alpha: float) -> None:
    """ConfigError unless ``alpha`` is a finite number ≥ 0."""
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha) or alpha < 0:
        raise ConfigError(_BAD_ALPHA.format(value=alpha))


def _equity_scale(
    overall: float,
    names: list[Any],
    values: np.ndarray,
    *,
    higher_is_better: bool,
    alpha: float,
    relative: bool,
    warn: bool,
) -> float:
    """ES-M (FairDiffusion ``modules.py`` form, direction-consistent for lower-is-better metrics)."""
    finite = np.isfinite(values)
    if warn and not finite.all():
        bad = ", ".join(repr(names[i]) for i in np.flatnonzero(~finite))
        warnings.warn(_NAN_GROUPS.format(groups=bad), FairsampleWarning, stacklevel=3)
    if not math.isfinite(overall):
        return float("nan")
    if not finite.any():
        if warn:
            warnings.warn(_NO_GROUPS, FairsampleWarning, stacklevel=3)
        return float("nan")
    delta = float(np.abs(overall - values[finite]).sum())
    if relative:
        if overall == 0:
            if warn:
                warnings.warn(_ZERO_OVERALL, FairsampleWarning, stacklevel=3)
            return float("nan")
        delta /= abs(overall)
    return overall / (1.0 + alpha * delta) if higher_is_better else overall * (1.0 + alpha * delta)


def equity_scale(
    overall: float,
    per_group: Mapping[Any, float] | ArrayLike,
    *,
    higher_is_better: bool,
    alpha: float = 1.0,
    relative: bool = False,
) -> float:
    """Equity-scaled metric ES-M (METHODS.md §5.5).

    With Δ = Σ_g |M − M_g| over groups with a defined value (``relative=True``: Δ / |M|, scale-free):

    - higher is better (AUC, accuracy, IS): ES-M = M / (1 + α Δ) ≤ M (FairDiffusion);
    - lower is better (FID): ES-M = M · (1 + α Δ) ≥ M (fairsample's definition; dividing would reward disparity).

    NaN groups are left out of Δ with a FairsampleWarning naming them.

    Args:
        overall: M on all samples (any scale; NaN → NaN).
        per_group: M_g as a mapping group → value, a pandas Series (index = groups) or a sequence.
        higher_is_better: direction of the metric.
        alpha: weight α ≥ 0 of the disparity (1 in FairDiffusion).
        relative: use Δ / |M| instead of Δ.

    Returns:
        ES-M, on the scale of M; NaN when M is NaN or no group is defined.

    Raises:
        ConfigError: ``alpha`` negative or not finite.

    Example:
        >>> equity_scale(0.8, {"a": 0.9, "b": 0.7}, higher_is_better=True)
        0.6666666666666666
        >>> equity_scale(20.0, [25.0, 15.0], higher_is_better=False, relative=True)
        30.0
    """
    _check_alpha(alpha)
    names, values = _per_group_values(per_group)
    return _equity_scale(
        float(overall),
        names,
        values,
        higher_is_better=higher_is_better,
        alpha=float(alpha),
        relative=relative,
        warn=True,
    )


def es_acc(y_true: ArrayLike, y_pred: ArrayLike, *, sensitive_features: ArrayLike, alpha: float = 1.0) -> float:
    """ES-ACC = Acc / (1 + α Σ_g |Acc − Acc_g|) (FairDiffusion), in [0, 1].

    Args:
        y_true: ``(N,)`` true class labels (str or int).
        y_pred: ``(N,)`` predicted class labels (binary: threshold scores at 0.5 first; multiclass: argmax).
        sensitive_features: ``(N,)`` group values (one attribute, ≥ 2 groups).
        alpha: weight α ≥ 0 of the disparity.

    Returns:
        ES-ACC in [0, 1].

    Raises:
        ConfigError: mismatched lengths, empty input, fewer than 2 groups, bad ``alpha``.

    Example:
        >>> es_acc([0, 1, 0, 1], [0, 1, 0, 0], sensitive_features=["a", "a", "b", "b"])
        0.5
    """
    d = _prepare(y_true, y_pred, sensitive_features)
    acc, acc_all = _group_accuracy(d)
    return equity_scale(acc_all, dict(zip(d.groups, acc, strict=True)), higher_is_better=True, alpha=alpha)


def essp(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    *,
    sensitive_features: ArrayLike,
    delta: Literal["acc", "dp"] = "acc",
) -> float:
    """Equity-scaled performance ESSP (METHODS.md §5.9), in [0, 1].

    - ``delta="acc"`` (default, FairSeg form with accuracy): Acc / (1 + Σ_g |Acc − Acc_g|), equal to ``es_acc``;
    - ``delta="dp"`` (FairSkin): Acc / (1 + dp_gap(mode="sum")); warns that it is not comparable with the default.

    Do not try to match FairGen's ESSP numbers (not reproducible on any common scale).

    Args:
        y_true: ``(N,)`` true class labels (str or int).
        y_pred: ``(N,)`` predicted class labels.
        sensitive_features: ``(N,)`` group values (one attribute, ≥ 2 groups).
        delta: ``"acc"`` or ``"dp"``.

    Returns:
        ESSP in [0, 1].

    Raises:
        ConfigError: mismatched lengths, empty input, fewer than 2 groups, unknown ``delta``.

    Example:
        >>> essp([0, 1, 0, 1], [0, 1, 0, 0], sensitive_features=["a", "a", "b", "b"])
        0.5
    """
    _check_option("delta", delta, ("acc", "dp"))
    d = _prepare(y_true, y_pred, sensitive_features)
    acc, acc_all = _group_accuracy(d)
    if delta == "acc":
        return _equity_scale(acc_all, d.groups, acc, higher_is_better=True, alpha=1.0, relative=False, warn=True)
    warnings.warn(_DELTA_DP, FairsampleWarning, stacklevel=2)
    sel, sel_all = _selection_rates(d)
    targets = _targets(d.classes, None)
    return acc_all / (1.0 + float(np.mean(_sum_abs(sel_all, sel)[targets])))


def _nar(acc: np.ndarray, warn: bool) -> float:
    """(max_g − min_g) / unweighted mean_g of accuracy over finite groups (FairDisCo ``cal_metrics``)."""
    acc = acc[np.isfinite(acc)]
    if acc.size < 2:
        return float("nan")
    if acc.mean() == 0:
        if warn:
            warnings.warn(_ZERO_MEAN, FairsampleWarning, stacklevel=3)
        return float("nan")
    return float((acc.max() - acc.min()) / acc.mean())


def _pqd(acc: np.ndarray, warn: bool) -> float:
    """min_g / max_g of accuracy over finite groups (FairDisCo ``cal_metrics``)."""
    acc = acc[np.isfinite(acc)]
    if acc.size < 2:
        return float("nan")
    if acc.max() == 0:
        if warn:
            warnings.warn(_ZERO_MAX, FairsampleWarning, stacklevel=3)
        return float("nan")
    return float(acc.min() / acc.max())


def nar(y_true: ArrayLike, y_pred: ArrayLike, *, sensitive_features: ArrayLike) -> float:
    """Normalised accuracy range NAR = (max_g Acc_g − min_g Acc_g) / mean_g Acc_g, ≥ 0 (0 = fair).

    The mean is unweighted over groups (FairDisCo ``cal_metrics``).

    Args:
        y_true: ``(N,)`` true class labels (str or int).
        y_pred: ``(N,)`` predicted class labels.
        sensitive_features: ``(N,)`` group values (one attribute, ≥ 2 groups).

    Returns:
        NAR ≥ 0; NaN (with a FairsampleWarning) when every group has accuracy 0.

    Raises:
        ConfigError: mismatched lengths, empty input, fewer than 2 groups.

    Example:
        >>> nar([0, 1, 0, 1], [0, 1, 0, 0], sensitive_features=["a", "a", "b", "b"])
        0.6666666666666666
    """
    acc, _ = _group_accuracy(_prepare(y_true, y_pred, sensitive_features))
    return _nar(acc, warn=True)


def pqd(y_true: ArrayLike, y_pred: ArrayLike, *, sensitive_features: ArrayLike) -> float:
    """Predictive-quality disparity PQD = min_g Acc_g / max_g Acc_g, in [0, 1] (1 = fair).

    Args:
        y_true: ``(N,)`` true class labels (str or int).
        y_pred: ``(N,)`` predicted class labels.
        sensitive_features: ``(N,)`` group values (one attribute, ≥ 2 groups).

    Returns:
        PQD in [0, 1]; NaN (with a FairsampleWarning) when every group has accuracy 0.

    Raises:
        ConfigError: mismatched lengths, empty input, fewer than 2 groups.

    Example:
        >>> pqd([0, 1, 0, 1], [0, 1, 0, 0], sensitive_features=["a", "a", "b", "b"])
        0.5
    """
    acc, _ = _group_accuracy(_prepare(y_true, y_pred, sensitive_features))
    return _pqd(acc, warn=True)
