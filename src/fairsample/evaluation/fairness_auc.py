"""ROC-AUC by group, ES-AUC and between-group AUC disparity (METHODS.md §5.5, §5.6): ``group_auc``, ``es_auc``,
``auc_disparity``.

Every AUC is scikit-learn ``roc_auc_score`` (binary; multiclass ``multi_class="ovr", average="macro"``). A group that
lacks a class, or has fewer than ``min_per_class`` positives or negatives of some class, has an undefined AUC: it is
NaN, named in one FairsampleWarning, and left out of ES-AUC and disparity (Harvard's −1 would enter the sums).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from sklearn.metrics import roc_auc_score

from fairsample.core.errors import ConfigError, FairsampleWarning
from fairsample.evaluation.fairness import _EMPTY, _check_option, _column, _encode, _prepare_groups
from fairsample.evaluation.fairness_equity import _check_alpha, _equity_scale

_SCORES_LEN = "`scores` has {m} rows but `y_true` has {n}; pass one score row per sample."
_SCORES_SHAPE = (
    "`scores` must be (N,) or (N, 2) for 2 classes and (N, K) with K = {k} classes {classes}, got shape {shape}; "
    "pass one probability column per class (or `classes=` in column order)."
)
_SCORES_NOT_FINITE = "`scores` has {count} non-finite value(s) (first at row {row}); pass finite probabilities."
_SCORES_NOT_PROBA = (
    "`scores` rows must sum to 1 for multiclass AUC (row sums range {lo:.4g}..{hi:.4g}); apply a softmax first."
)
_UNKNOWN_LABELS = "`y_true` has label(s) {labels} that are not in `classes`={classes}; add them to `classes`."
_FEW_CLASSES = "`y_true` has {k} class(es) {classes}; AUC needs at least 2 - pass `classes=` in score-column order."
_BAD_MIN = "`min_per_class` must be an integer >= 1, got {value!r}."
_GROUP_UNDEFINED = (
    "group {group!r} has class counts {counts} (n={n}): AUC is undefined and will be reported as NaN (needs >= "
    "{m} positives and >= {m} negatives per class); it is left out of ES-AUC and AUC disparity."
)
_OVERALL_UNDEFINED = "AUC over all samples is undefined: class counts {counts}; the result is NaN."


@dataclass(frozen=True)
class _Scored:
    """Validated labels (codes into ``classes``), score matrix and groups."""

    codes: np.ndarray  # (N,) int index into classes
    scores: np.ndarray  # (N,) positive-class score (binary) or (N, K) probabilities
    classes: list[Any]
    group_codes: np.ndarray  # (N,)
    groups: list[Any]


def _prepare_scores(
    y_true: ArrayLike, scores: ArrayLike, classes: Sequence[Any] | None
) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    """Validate labels and scores → ((N,) codes, (N,) or (N, K) float scores, classes)."""
    yt = _column("y_true", y_true)
    if len(yt) == 0:
        raise ConfigError(_EMPTY)
    s = np.asarray(scores, dtype=float)
    if s.ndim == 0 or len(s) != len(yt):
        raise ConfigError(_SCORES_LEN.format(m=0 if s.ndim == 0 else len(s), n=len(yt)))
    if classes is None:
        classes, codes = _encode("y_true", yt)
    else:
        classes = list(classes)
        lookup = {c: k for k, c in enumerate(classes)}
        unknown = sorted({v for v in yt.tolist() if v not in lookup}, key=repr)
        if unknown:
            raise ConfigError(_UNKNOWN_LABELS.format(labels=unknown[:5], classes=classes))
        codes = np.array([lookup[v] for v in yt.tolist()], dtype=np.intp)
    k = len(classes)
    if k < 2:
        raise ConfigError(_FEW_CLASSES.format(k=k, classes=classes))
    if s.ndim == 2 and s.shape[1] == 1 and k == 2:
        s = s[:, 0]
    elif s.ndim == 2 and s.shape[1] == 2 and k == 2:
        s = s[:, 1]
    if not ((k == 2 and s.ndim == 1) or (k > 2 and s.ndim == 2 and s.shape[1] == k)):
        raise ConfigError(_SCORES_SHAPE.format(k=k, classes=classes, shape=np.shape(scores)))
    bad = ~np.isfinite(s).reshape(len(s), -1).all(axis=1)
    if bad.any():
        raise ConfigError(_SCORES_NOT_FINITE.format(count=int(bad.sum()), row=int(np.flatnonzero(bad)[0])))
    if k > 2 and not np.allclose(1, s.sum(axis=1)):
        sums = s.sum(axis=1)
        raise ConfigError(_SCORES_NOT_PROBA.format(lo=sums.min(), hi=sums.max()))
    return codes, s, classes


def _auc(codes: np.ndarray, scores: np.ndarray, k: int, min_per_class: int) -> float:
    """sklearn ROC-AUC of one set of samples, NaN unless every class has ≥ min positives and ≥ min negatives."""
    counts = np.bincount(codes, minlength=k)
    if counts.min() < min_per_class or (len(codes) - counts).min() < min_per_class:
        return float("nan")
    if k == 2:
        return float(roc_auc_score(codes == 1, scores))
    return float(roc_auc_score(codes, scores, multi_class="ovr", average="macro", labels=np.arange(k)))


def _rank_auc(codes: np.ndarray, scores: np.ndarray, k: int, min_per_class: int) -> float:
    """:func:`_auc` through the Mann-Whitney rank statistic (average ranks for ties), all classes in one ranking.

    Equal to ``roc_auc_score`` (binary, and ovr-macro over ``labels=range(k)``) up to float rounding (tested); about
    50x faster, for bootstrap loops.
    """
    from scipy.stats import rankdata

    counts = np.bincount(codes, minlength=k)
    n = len(codes)
    if counts.min() < min_per_class or (n - counts).min() < min_per_class:
        return float("nan")
    binary = scores.ndim == 1  # binary: the positive-class score, class 1 positive
    s = scores[:, None] if binary else scores
    onehot = codes[:, None] == (np.array([1]) if binary else np.arange(k))[None, :]
    ranks = rankdata(s, axis=0)
    pos = onehot.sum(axis=0).astype(float)
    auc = ((ranks * onehot).sum(axis=0) - pos * (pos + 1) / 2) / (pos * (n - pos))
    return float(auc.mean())


def _auc_table(
    codes: np.ndarray,
    scores: np.ndarray,
    group_codes: np.ndarray,
    k: int,
    g: int,
    min_per_class: int,
    fast: bool = False,
) -> tuple[float, np.ndarray]:
    """Overall AUC (defined as soon as every class is present) and (G,) per-group AUC (NaN if undefined/empty);
    ``fast`` uses :func:`_rank_auc` (bootstrap resamples) instead of scikit-learn."""
    auc = _rank_auc if fast else _auc
    overall = auc(codes, scores, k, 1)
    per_group = np.full(g, np.nan)
    for j in range(g):
        mask = group_codes == j
        if mask.any():
            per_group[j] = auc(codes[mask], scores[mask], k, min_per_class)
    return overall, per_group


def _check_min(min_per_class: int) -> None:
    """ConfigError unless ``min_per_class`` is an integer ≥ 1."""
    if isinstance(min_per_class, bool) or not isinstance(min_per_class, int | np.integer) or min_per_class < 1:
        raise ConfigError(_BAD_MIN.format(value=min_per_class))


def _prepare_all(
    y_true: ArrayLike,
    scores: ArrayLike,
    sensitive_features: ArrayLike,
    classes: Sequence[Any] | None,
    min_per_class: int,
) -> _Scored:
    """Validate everything an AUC-by-group function takes."""
    _check_min(min_per_class)
    codes, s, cls = _prepare_scores(y_true, scores, classes)
    groups, group_codes = _prepare_groups(sensitive_features, len(codes))
    return _Scored(codes, s, cls, group_codes, groups)


def _warn_groups(d: _Scored, per_group: np.ndarray, min_per_class: int, stacklevel: int) -> None:
    """One FairsampleWarning per group whose AUC is NaN, with its class counts."""
    for j in np.flatnonzero(~np.isfinite(per_group)):
        counts = np.bincount(d.codes[d.group_codes == j], minlength=len(d.classes))
        msg = _GROUP_UNDEFINED.format(
            group=d.groups[j],
            counts=dict(zip(d.classes, counts.tolist(), strict=True)),
            n=int(counts.sum()),
            m=min_per_class,
        )
        warnings.warn(msg, FairsampleWarning, stacklevel=stacklevel)


def _warn_overall(d: _Scored, overall: float, stacklevel: int) -> None:
    """FairsampleWarning when the AUC over all samples is undefined (a class is absent)."""
    if not np.isfinite(overall):
        counts = dict(zip(d.classes, np.bincount(d.codes, minlength=len(d.classes)).tolist(), strict=True))
        warnings.warn(_OVERALL_UNDEFINED.format(counts=counts), FairsampleWarning, stacklevel=stacklevel)


def group_auc(
    y_true: ArrayLike,
    scores: ArrayLike,
    *,
    sensitive_features: ArrayLike,
    classes: Sequence[Any] | None = None,
    min_per_class: int = 5,
) -> pd.Series:
    """ROC-AUC of each group (scikit-learn ``roc_auc_score``; multiclass macro one-vs-rest).

    Args:
        y_true: ``(N,)`` true class labels (str or int).
        scores: binary: ``(N,)`` score of the positive class (the larger label) or ``(N, 2)`` (column 1 is used);
            multiclass: ``(N, K)`` probabilities (rows sum to 1), columns in the order of ``classes``.
        sensitive_features: ``(N,)`` group values (one attribute, ≥ 2 groups).
        classes: class of each score column; default: the sorted labels of ``y_true``.
        min_per_class: a group needs ≥ this many positives and negatives of every class, else its AUC is NaN.

    Returns:
        ``pd.Series`` of AUC in [0, 1] (NaN = undefined), index = sorted groups, named ``"auc"``.

    Raises:
        ConfigError: mismatched lengths, empty input, fewer than 2 groups or classes, bad score shape or values.

    Example:
        >>> y = [0, 1] * 10
        >>> s = [0.2, 0.7] * 5 + [0.6, 0.4] * 5
        >>> group_auc(y, s, sensitive_features=["a"] * 10 + ["b"] * 10).to_dict()
        {'a': 1.0, 'b': 0.0}
    """
    d = _prepare_all(y_true, scores, sensitive_features, classes, min_per_class)
    _, per_group = _auc_table(d.codes, d.scores, d.group_codes, len(d.classes), len(d.groups), min_per_class)
    _warn_groups(d, per_group, min_per_class, stacklevel=3)
    return pd.Series(per_group, index=pd.Index(d.groups, name="group"), name="auc")


def es_auc(
    y_true: ArrayLike,
    scores: ArrayLike,
    *,
    sensitive_features: ArrayLike,
    classes: Sequence[Any] | None = None,
    min_per_class: int = 5,
    alpha: float = 1.0,
) -> float:
    """ES-AUC = AUC / (1 + α Σ_g |AUC − AUC_g|) (FairDiffusion ``modules.py``), in [0, 1].

    Groups with an undefined AUC are left out of the sum (one FairsampleWarning per group).

    Args:
        y_true, scores, sensitive_features, classes, min_per_class: as in :func:`group_auc`.
        alpha: weight α ≥ 0 of the disparity.

    Returns:
        ES-AUC in [0, 1]; NaN when the overall AUC or every group AUC is undefined.

    Raises:
        ConfigError: as :func:`group_auc`, or a bad ``alpha``.

    Example:
        >>> y = [0, 1] * 10
        >>> s = [0.2, 0.7] * 5 + [0.6, 0.4] * 5
        >>> es_auc(y, s, sensitive_features=["a"] * 10 + ["b"] * 10)  # AUC 0.75; groups 1.0 and 0.0
        0.375
    """
    _check_alpha(alpha)
    d = _prepare_all(y_true, scores, sensitive_features, classes, min_per_class)
    overall, per_group = _auc_table(d.codes, d.scores, d.group_codes, len(d.classes), len(d.groups), min_per_class)
    _warn_overall(d, overall, stacklevel=3)
    _warn_groups(d, per_group, min_per_class, stacklevel=3)
    return _equity_scale(
        overall, d.groups, per_group, higher_is_better=True, alpha=float(alpha), relative=False, warn=False
    )


def _disparity(overall: float, per_group: np.ndarray, method: str, half: bool) -> float:
    """std_g (ddof 0) or max − min of finite group AUCs over AUC (or |AUC − 0.5|; Harvard ``_half``)."""
    vals = per_group[np.isfinite(per_group)]
    denom = abs(overall - 0.5) if half else overall
    if vals.size < 2 or not np.isfinite(denom) or denom == 0:
        return float("nan")
    spread = vals.std() if method == "std" else vals.max() - vals.min()
    return float(spread / denom)


def auc_disparity(
    y_true: ArrayLike,
    scores: ArrayLike,
    *,
    sensitive_features: ArrayLike,
    method: Literal["std", "range"] = "std",
    half: bool = False,
    classes: Sequence[Any] | None = None,
    min_per_class: int = 5,
) -> float:
    """Between-group AUC disparity (FairDiffusion/Harvard): std_g(AUC_g) / AUC or (max_g − min_g) / AUC, ≥ 0.

    std uses ddof = 0 over the groups with a defined AUC. ``half=True`` divides by |AUC − 0.5| instead (Harvard's
    ``_half`` variant).

    Args:
        y_true, scores, sensitive_features, classes, min_per_class: as in :func:`group_auc`.
        method: ``"std"`` or ``"range"``.
        half: divide by |AUC − 0.5| instead of AUC.

    Returns:
        The disparity ≥ 0; NaN when fewer than 2 groups have a defined AUC or the denominator is 0.

    Raises:
        ConfigError: as :func:`group_auc`, or an unknown ``method``.

    Example:
        >>> y = [0, 1] * 10
        >>> s = [0.2, 0.7] * 5 + [0.6, 0.4] * 5
        >>> auc_disparity(y, s, sensitive_features=["a"] * 10 + ["b"] * 10, method="range")
        1.3333333333333333
    """
    _check_option("method", method, ("std", "range"))
    d = _prepare_all(y_true, scores, sensitive_features, classes, min_per_class)
    overall, per_group = _auc_table(d.codes, d.scores, d.group_codes, len(d.classes), len(d.groups), min_per_class)
    _warn_overall(d, overall, stacklevel=3)
    _warn_groups(d, per_group, min_per_class, stacklevel=3)
    return _disparity(overall, per_group, method, half)
