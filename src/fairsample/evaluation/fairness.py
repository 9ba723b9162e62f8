"""Group-fairness gaps of predicted labels (METHODS.md §5.7, §5.8, §5.10): ``dp_gap``, ``eopp_gap``, ``eodds_gap``,
``eom``.

Rates come from fairlearn ``MetricFrame`` (``selection_rate``, ``true_positive_rate``, ``false_positive_rate``) with
``y_true`` = labels and ``y_pred`` = predictions (never swapped). fairsample only adds the one-vs-rest loop over
classes, the macro average and the handling of undefined rates. All values are fractions, never ×100.

Class conventions shared by every function here:

- the classes are the sorted union of the values in ``y_true`` and ``y_pred``;
- binary (2 classes): only the positive class counts, i.e. the larger label in sorted order (``1`` for 0/1 labels,
  ``"b"`` for ``"a"/"b"``) unless ``pos_label=`` names it; this equals fairlearn's binary metrics on 0/1 labels;
- multiclass: one-vs-rest per class, then the unweighted (macro) mean over classes; ``pos_label=c`` keeps class ``c``.

A rate that is undefined in a group (TPR of class c in a group with no sample of class c; FPR when every sample of the
group is class c) is NaN; that group is left out of the class's gap with one :class:`FairsampleWarning`. fairlearn
instead reports such a rate as 0, which inflates the gap.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame, false_positive_rate, selection_rate, true_positive_rate
from numpy.typing import ArrayLike
from sklearn.metrics import accuracy_score

from fairsample.core.errors import ConfigError, FairsampleWarning

_LEN_MISMATCH = "`{name}` has {m} rows but `y_true` has {n}; pass one value per sample."
_EMPTY = "`y_true` is empty (0 samples); pass at least one sample per group."
_FEW_GROUPS = (
    "`sensitive_features` has {k} group(s) {groups}; a between-group metric needs at least 2 - pass an attribute "
    "with 2 or more values."
)
_NOT_1D = "`{name}` must be 1-D, got shape {shape}; pass one value per sample."
_SF_NOT_1D = (
    "`sensitive_features` must be 1-D (one attribute per call), got shape {shape}; call once per attribute, "
    "e.g. sensitive_features=df['sex']."
)
_MISSING = (
    "`{name}` has {count} missing value(s) (first at row {row}); drop those rows or map them to an explicit value "
    "such as 'unknown'."
)
_MIXED_KINDS = "`y_true` holds {a} but `y_pred` holds {b}; pass labels of one type (e.g. both as str)."
_UNSORTABLE = "`{name}` mixes value types that cannot be sorted ({types}); pass values of one type."
_BAD_OPTION = "`{name}` must be one of {allowed}, got {value!r}."
_BAD_POS_LABEL = "`pos_label`={value!r} is not one of the classes {classes}; pass one of them or None."
_UNDEFINED_RATE = "{func}: {rate} is undefined ({why}) for {where}; those groups are left out of that class's gap."
_UNDEFINED_RATIO = "eom: TPR is 0 in every group for class(es) {classes}; the min/max ratio is undefined (NaN)."

Average = Literal["macro"] | None


@dataclass(frozen=True)
class _Labelled:
    """Validated labels, predictions and groups with integer codes (classes = sorted union of labels)."""

    y_true: np.ndarray  # (N,) labels as given
    y_pred: np.ndarray  # (N,) predictions as given
    true_codes: np.ndarray  # (N,) int index into classes
    pred_codes: np.ndarray  # (N,) int index into classes
    classes: list[Any]  # sorted, Python scalars
    group_codes: np.ndarray  # (N,) int index into groups
    groups: list[Any]  # sorted, Python scalars


@dataclass
class _Rates:
    """Per-group (G, K) and overall (K,) rates; NaN where undefined or where a group is empty."""

    n: np.ndarray  # (G,) group sizes
    sel: np.ndarray  # (G, K) P(ŷ=c | g)
    sel_all: np.ndarray  # (K,)
    tpr: np.ndarray  # (G, K) P(ŷ=c | y=c, g)
    tpr_all: np.ndarray  # (K,)
    fpr: np.ndarray  # (G, K) P(ŷ=c | y≠c, g)
    fpr_all: np.ndarray  # (K,)
    acc: np.ndarray  # (G,)
    acc_all: float


def _column(name: str, values: ArrayLike) -> np.ndarray:
    """A 1-D numpy view of ``values`` (a one-column frame is squeezed); no missing values allowed."""
    if isinstance(values, pd.DataFrame):
        if values.shape[1] != 1:
            raise ConfigError(
                (_SF_NOT_1D if name == "sensitive_features" else _NOT_1D).format(name=name, shape=values.shape)
            )
        values = values.iloc[:, 0]
    arr = values.to_numpy() if isinstance(values, pd.Series) else np.asarray(values)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ConfigError((_SF_NOT_1D if name == "sensitive_features" else _NOT_1D).format(name=name, shape=arr.shape))
    missing = np.asarray(pd.isna(arr))
    if missing.any():
        raise ConfigError(_MISSING.format(name=name, count=int(missing.sum()), row=int(np.flatnonzero(missing)[0])))
    return arr


def _encode(name: str, values: np.ndarray) -> tuple[list[Any], np.ndarray]:
    """Sorted unique values (Python scalars) and the (N,) integer code of each element."""
    try:
        uniques, codes = np.unique(values, return_inverse=True)
    except TypeError:
        types = sorted({type(v).__name__ for v in values.tolist()})
        raise ConfigError(_UNSORTABLE.format(name=name, types=", ".join(types))) from None
    return uniques.tolist(), codes.reshape(-1).astype(np.intp)


def _check_length(name: str, arr: np.ndarray, n: int) -> None:
    """ConfigError unless ``arr`` has ``n`` rows."""
    if len(arr) != n:
        raise ConfigError(_LEN_MISMATCH.format(name=name, m=len(arr), n=n))


def _prepare_groups(sensitive_features: ArrayLike, n: int) -> tuple[list[Any], np.ndarray]:
    """Validate one attribute column of ``n`` rows with ≥ 2 groups → (sorted groups, (N,) codes)."""
    sf = _column("sensitive_features", sensitive_features)
    _check_length("sensitive_features", sf, n)
    groups, codes = _encode("sensitive_features", sf)
    if len(groups) < 2:
        raise ConfigError(_FEW_GROUPS.format(k=len(groups), groups=groups))
    return groups, codes


def _label_kind(arr: np.ndarray) -> str:
    """'numbers' or 'strings' (object arrays count as strings unless every value is a number)."""
    if arr.dtype.kind in "biuf":
        return "numbers"
    if arr.dtype.kind == "O" and all(isinstance(v, int | float | np.number) for v in arr.tolist()):
        return "numbers"
    return "strings"


def _prepare(y_true: ArrayLike, y_pred: ArrayLike, sensitive_features: ArrayLike) -> _Labelled:
    """Validate ``(y_true, y_pred, sensitive_features)`` and encode labels and groups."""
    yt = _column("y_true", y_true)
    if len(yt) == 0:
        raise ConfigError(_EMPTY)
    yp = _column("y_pred", y_pred)
    _check_length("y_pred", yp, len(yt))
    groups, group_codes = _prepare_groups(sensitive_features, len(yt))
    kt, kp = _label_kind(yt), _label_kind(yp)
    if kt != kp:
        raise ConfigError(_MIXED_KINDS.format(a=kt, b=kp))
    both = np.concatenate([yt, yp]) if yt.dtype.kind == yp.dtype.kind else np.concatenate([yt, yp]).astype(object)
    classes, codes = _encode("y_true/y_pred", both)
    return _Labelled(yt, yp, codes[: len(yt)], codes[len(yt) :], classes, group_codes, groups)


def _targets(classes: Sequence[Any], pos_label: Any) -> list[int]:
    """Class indices that count: ``pos_label``; else the larger of two classes; else every class."""
    if pos_label is not None:
        if pos_label not in classes:
            raise ConfigError(_BAD_POS_LABEL.format(value=pos_label, classes=list(classes)))
        return [list(classes).index(pos_label)]
    return [1] if len(classes) == 2 else list(range(len(classes)))


def _check_option(name: str, value: Any, allowed: Sequence[Any]) -> None:
    """ConfigError unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ConfigError(_BAD_OPTION.format(name=name, allowed=list(allowed), value=value))


def _class_counts(d: _Labelled) -> tuple[np.ndarray, np.ndarray]:
    """(G,) group sizes and (G, K) number of true samples of each class per group."""
    k, g = len(d.classes), len(d.groups)
    pos = np.bincount(d.group_codes * k + d.true_codes, minlength=g * k).reshape(g, k)
    return pos.sum(axis=1), pos


def _by_group(mf: MetricFrame, names: list[str], n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """(G, M) by-group and (M,) overall values of a MetricFrame built on integer group codes."""
    by_group = mf.by_group
    frame = by_group.to_frame() if isinstance(by_group, pd.Series) else by_group
    table = np.array(frame.reindex(range(n_groups))[names], dtype=float)
    overall = mf.overall
    return table, np.array(overall[names] if isinstance(overall, pd.Series) else [overall], dtype=float)


def _selection_rates(d: _Labelled) -> tuple[np.ndarray, np.ndarray]:
    """(G, K) and (K,) P(ŷ=c | g) via ``MetricFrame(selection_rate)`` with y_true = labels, y_pred = predictions."""
    metrics = {f"c{k}": functools.partial(selection_rate, pos_label=c) for k, c in enumerate(d.classes)}
    mf = MetricFrame(metrics=metrics, y_true=d.y_true, y_pred=d.y_pred, sensitive_features=d.group_codes)
    return _by_group(mf, list(metrics), len(d.groups))


def _one_vs_rest(fn: Callable[..., float], k: int) -> Callable[[np.ndarray, np.ndarray], float]:
    """A fairlearn rate on class-code arrays with class k as the positive label (one-vs-rest indicators)."""

    def metric(y_true: np.ndarray, y_pred: np.ndarray) -> float:
        return float(fn((y_true == k).astype(int), (y_pred == k).astype(int), pos_label=1))

    return metric


def _tpr_fpr(d: _Labelled) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One-vs-rest TPR and FPR, (G, K) and (K,) each, via fairlearn ``MetricFrame``; undefined rates → NaN."""
    k = len(d.classes)
    metrics: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {}
    for c in range(k):
        metrics[f"tpr{c}"] = _one_vs_rest(true_positive_rate, c)
        metrics[f"fpr{c}"] = _one_vs_rest(false_positive_rate, c)
    mf = MetricFrame(metrics=metrics, y_true=d.true_codes, y_pred=d.pred_codes, sensitive_features=d.group_codes)
    tpr, tpr_all = _by_group(mf, [f"tpr{c}" for c in range(k)], len(d.groups))
    fpr, fpr_all = _by_group(mf, [f"fpr{c}" for c in range(k)], len(d.groups))
    n, pos = _class_counts(d)
    tpr[pos == 0] = np.nan
    fpr[(n[:, None] - pos) == 0] = np.nan
    pos_all = pos.sum(axis=0)
    tpr_all[pos_all == 0] = np.nan
    fpr_all[(n.sum() - pos_all) == 0] = np.nan
    return tpr, tpr_all, fpr, fpr_all


def _group_accuracy(d: _Labelled) -> tuple[np.ndarray, float]:
    """(G,) per-group and overall accuracy via ``MetricFrame(sklearn accuracy_score)``."""
    mf = MetricFrame(metrics=accuracy_score, y_true=d.y_true, y_pred=d.y_pred, sensitive_features=d.group_codes)
    return np.array(mf.by_group.reindex(range(len(d.groups))), dtype=float), float(mf.overall)


def _rates_from_fairlearn(d: _Labelled) -> _Rates:
    """Every rate of :class:`_Rates` through fairlearn/scikit-learn (the reference path)."""
    n, _ = _class_counts(d)
    sel, sel_all = _selection_rates(d)
    tpr, tpr_all, fpr, fpr_all = _tpr_fpr(d)
    acc, acc_all = _group_accuracy(d)
    return _Rates(n, sel, sel_all, tpr, tpr_all, fpr, fpr_all, acc, acc_all)


def _rates_from_counts(
    true_codes: np.ndarray, pred_codes: np.ndarray, group_codes: np.ndarray, k: int, g: int
) -> _Rates:
    """The same rates from one (G, K, K) confusion-count tensor (numpy only; for bootstrap loops, tested equal)."""
    cm = np.bincount((group_codes * k + true_codes) * k + pred_codes, minlength=g * k * k).reshape(g, k, k)
    cm = cm.astype(float)
    cm_all = cm.sum(axis=0)
    n = cm.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        pos, pred, tp = cm.sum(axis=2), cm.sum(axis=1), np.diagonal(cm, axis1=1, axis2=2)
        sel = pred / n[:, None]
        tpr = tp / pos
        fpr = (pred - tp) / (n[:, None] - pos)
        acc = tp.sum(axis=1) / n
        n_all, pos_all, pred_all, tp_all = cm_all.sum(), cm_all.sum(axis=1), cm_all.sum(axis=0), np.diag(cm_all)
        sel_all = pred_all / n_all
        tpr_all = tp_all / pos_all
        fpr_all = (pred_all - tp_all) / (n_all - pos_all)
        acc_all = float(tp_all.sum() / n_all)
    return _Rates(n, sel, sel_all, tpr, tpr_all, fpr, fpr_all, acc, acc_all)


def _maxmin(rates: np.ndarray) -> np.ndarray:
    """(G, K) → (K,) max_g − min_g over finite entries; NaN when fewer than 2 groups are finite."""
    finite = np.isfinite(rates)
    hi = np.where(finite, rates, -np.inf).max(axis=0)
    lo = np.where(finite, rates, np.inf).min(axis=0)
    return np.where(finite.sum(axis=0) >= 2, hi - lo, np.nan)


def _sum_abs(overall: np.ndarray, rates: np.ndarray) -> np.ndarray:
    """(K,), (G, K) → (K,) Σ_g |overall − rate_g| over finite entries (FairSkin); NaN when fewer than 2 are finite."""
    finite = np.isfinite(rates)
    diff = np.where(finite, np.abs(np.where(finite, rates, 0.0) - overall), 0.0).sum(axis=0)
    return np.where(finite.sum(axis=0) >= 2, diff, np.nan)


def _min_over_max(rates: np.ndarray) -> np.ndarray:
    """(G, K) → (K,) min_g / max_g over finite entries (FairDisCo ratio); NaN when max is 0 or < 2 finite."""
    finite = np.isfinite(rates)
    hi = np.where(finite, rates, -np.inf).max(axis=0)
    lo = np.where(finite, rates, np.inf).min(axis=0)
    ok = (finite.sum(axis=0) >= 2) & (hi > 0)
    return np.where(ok, lo / np.where(ok, hi, 1.0), np.nan)


def _average(
    per_class: np.ndarray, targets: list[int], classes: list[Any], average: Average
) -> float | dict[Any, float]:
    """Macro mean over the target classes (finite ones only; NaN if none), or a class → value dict."""
    vals = per_class[targets]
    if average is None:
        return {classes[k]: float(v) for k, v in zip(targets, vals, strict=True)}
    finite = vals[np.isfinite(vals)]
    return float(finite.mean()) if finite.size else float("nan")


def _warn_undefined(
    func: str,
    rate: str,
    why: str,
    values: np.ndarray,
    n: np.ndarray,
    targets: list[int],
    classes: list[Any],
    groups: list[Any],
) -> None:
    """One FairsampleWarning listing (class, groups) pairs whose rate is NaN in a non-empty group."""
    items = []
    for k in targets:
        bad = [repr(groups[g]) for g in np.flatnonzero(~np.isfinite(values[:, k]) & (n > 0))]
        if bad:
            items.append(f"class {classes[k]!r} in group(s) {', '.join(bad)}")
    if items:
        warnings.warn(
            _UNDEFINED_RATE.format(func=func, rate=rate, why=why, where="; ".join(items)),
            FairsampleWarning,
            stacklevel=3,
        )


_NO_POSITIVES = "no sample of the class"
_NO_NEGATIVES = "every sample is of the class"


def dp_gap(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    *,
    sensitive_features: ArrayLike,
    mode: Literal["maxmin", "sum"] = "maxmin",
    average: Average = "macro",
    pos_label: Any = None,
) -> float | dict[Any, float]:
    """Demographic-parity gap of predicted labels (METHODS.md §5.7), a fraction ≥ 0 (0 = parity).

    For each class c, r_{z,c} = P(ŷ=c | z) from fairlearn ``MetricFrame(metrics=selection_rate, y_true=labels,
    y_pred=predictions)``. ``mode="maxmin"``: gap_c = max_z r_{z,c} − min_z r_{z,c} (fairlearn; for 0/1 labels equal to
    ``demographic_parity_difference``), in [0, 1]. ``mode="sum"``: gap_c = Σ_z |P(ŷ=c) − r_{z,c}| (FairSkin), in
    [0, |Z|].

    Args:
        y_true: ``(N,)`` true class labels (str or int). Only their set of classes matters here.
        y_pred: ``(N,)`` predicted class labels, same type as ``y_true``.
        sensitive_features: ``(N,)`` group value of each sample (one attribute, ≥ 2 groups).
        mode: ``"maxmin"`` or ``"sum"``.
        average: ``"macro"`` (mean over classes) or ``None`` (dict class → gap).
        pos_label: the class to evaluate. Default: binary → the larger label; multiclass → every class.

    Returns:
        The gap as a float, or a dict class → gap when ``average=None``.

    Raises:
        ConfigError: mismatched lengths, empty input, fewer than 2 groups, unknown option or ``pos_label``.

    Example:
        >>> dp_gap([0, 1, 0, 1], [1, 1, 0, 1], sensitive_features=["a", "a", "b", "b"])
        0.5
    """
    _check_option("mode", mode, ("maxmin", "sum"))
    _check_option("average", average, ("macro", None))
    d = _prepare(y_true, y_pred, sensitive_features)
    targets = _targets(d.classes, pos_label)
    sel, sel_all = _selection_rates(d)
    per_class = _maxmin(sel) if mode == "maxmin" else _sum_abs(sel_all, sel)
    return _average(per_class, targets, d.classes, average)


def eopp_gap(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    *,
    sensitive_features: ArrayLike,
    average: Average = "macro",
    pos_label: Any = None,
) -> float | dict[Any, float]:
    """Equal-opportunity gap (Hardt et al.; what FairGen/FairSkin call "EO"), a fraction in [0, 1] (0 = fair).

    gap_c = max_z TPR_{z,c} − min_z TPR_{z,c}, with TPR_{z,c} = P(ŷ=c | y=c, z) from fairlearn
    ``MetricFrame(true_positive_rate)`` on one-vs-rest indicators. Binary: the positive class only (for 0/1 labels
    equal to fairlearn ``equal_opportunity_difference``); multiclass: macro mean over classes (a fairsample extension).
    Groups without a sample of class c are left out of gap_c (FairsampleWarning).

    Args:
        y_true: ``(N,)`` true class labels (str or int).
        y_pred: ``(N,)`` predicted class labels.
        sensitive_features: ``(N,)`` group values (one attribute, ≥ 2 groups).
        average: ``"macro"`` or ``None`` (dict class → gap).
        pos_label: the class to evaluate (default: binary → larger label; multiclass → all).

    Returns:
        The gap (NaN if no class has 2 groups with a defined TPR), or a dict when ``average=None``.

    Raises:
        ConfigError: mismatched lengths, empty input, fewer than 2 groups, unknown option or ``pos_label``.

    Example:
        >>> eopp_gap([1, 1, 0, 1, 1, 0], [1, 0, 0, 1, 1, 1], sensitive_features=["a"] * 3 + ["b"] * 3)
        0.5
    """
    _check_option("average", average, ("macro", None))
    d = _prepare(y_true, y_pred, sensitive_features)
    targets = _targets(d.classes, pos_label)
    tpr, _, _, _ = _tpr_fpr(d)
    n, _ = _class_counts(d)
    _warn_undefined("eopp_gap", "TPR", _NO_POSITIVES, tpr, n, targets, d.classes, d.groups)
    return _average(_maxmin(tpr), targets, d.classes, average)


def eodds_gap(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    *,
    sensitive_features: ArrayLike,
    average: Average = "macro",
    pos_label: Any = None,
) -> float | dict[Any, float]:
    """Equalized-odds gap (never called "EO"), a fraction in [0, 1] (0 = fair).

    gap_c = max(TPR gap_c, FPR gap_c), each gap max_z − min_z of one-vs-rest rates from fairlearn ``MetricFrame``.
    Binary: the positive class only, equal to fairlearn ``equalized_odds_difference`` (``agg="worst_case"``) for 0/1
    labels; multiclass: macro mean over classes (a fairsample extension). Undefined rates are left out
    (FairsampleWarning).

    Args:
        y_true: ``(N,)`` true class labels (str or int).
        y_pred: ``(N,)`` predicted class labels.
        sensitive_features: ``(N,)`` group values (one attribute, ≥ 2 groups).
        average: ``"macro"`` or ``None`` (dict class → gap).
        pos_label: the class to evaluate (default: binary → larger label; multiclass → all).

    Returns:
        The gap, or a dict when ``average=None``.

    Raises:
        ConfigError: mismatched lengths, empty input, fewer than 2 groups, unknown option or ``pos_label``.

    Example:
        >>> eodds_gap([1, 1, 0, 1, 1, 0], [1, 0, 0, 1, 1, 1], sensitive_features=["a"] * 3 + ["b"] * 3)
        1.0
    """
    _check_option("average", average, ("macro", None))
    d = _prepare(y_true, y_pred, sensitive_features)
    targets = _targets(d.classes, pos_label)
    tpr, _, fpr, _ = _tpr_fpr(d)
    n, _ = _class_counts(d)
    _warn_undefined("eodds_gap", "TPR", _NO_POSITIVES, tpr, n, targets, d.classes, d.groups)
    _warn_undefined("eodds_gap", "FPR", _NO_NEGATIVES, fpr, n, targets, d.classes, d.groups)
    return _average(np.fmax(_maxmin(tpr), _maxmin(fpr)), targets, d.classes, average)


def eom(y_true: ArrayLike, y_pred: ArrayLike, *, sensitive_features: ArrayLike) -> float:
    """Equal-opportunity measure EOM = mean_c min_g TPR_{g,c} / max_g TPR_{g,c} (FairDisCo), in [0, 1] (1 = fair).

    The mean runs over **every** class, also for binary labels (as FairDisCo's ``cal_metrics``). TPRs come from
    fairlearn ``MetricFrame(true_positive_rate)`` one-vs-rest. Groups without a sample of class c are left out of that
    class; a class whose TPR is 0 in every group is NaN and left out of the mean (FairsampleWarning for both).

    Args:
        y_true: ``(N,)`` true class labels (str or int).
        y_pred: ``(N,)`` predicted class labels.
        sensitive_features: ``(N,)`` group values (one attribute, ≥ 2 groups).

    Returns:
        EOM in [0, 1], NaN when no class is defined.

    Raises:
        ConfigError: mismatched lengths, empty input, fewer than 2 groups.

    Example:
        >>> eom([0, 1, 0, 1], [0, 1, 1, 1], sensitive_features=["a", "a", "b", "b"])
        0.5
    """
    d = _prepare(y_true, y_pred, sensitive_features)
    tpr, _, _, _ = _tpr_fpr(d)
    n, _ = _class_counts(d)
    every = list(range(len(d.classes)))
    _warn_undefined("eom", "TPR", _NO_POSITIVES, tpr, n, every, d.classes, d.groups)
    ratios = _min_over_max(tpr)
    zero = [d.classes[k] for k in every if np.isfinite(tpr[:, k]).sum() >= 2 and np.nanmax(tpr[:, k]) == 0]
    if zero:
        warnings.warn(_UNDEFINED_RATIO.format(classes=zero), FairsampleWarning, stacklevel=2)
    return float(_average(ratios, every, d.classes, "macro"))  # type: ignore[arg-type]
