"""One fairness report per sensitive attribute (METHODS.md §5.14): ``FairnessReport``, ``fairness_report``.

Point estimates go through fairlearn ``MetricFrame`` and scikit-learn (the same code paths as ``dp_gap``, ``es_auc``,
...). Bootstrap resamples recompute the rates from one confusion-count tensor per resample (numpy ``bincount``; tested
equal to the MetricFrame path), because a MetricFrame costs tens of milliseconds and 100 resamples × 11 metrics would
take half a minute. AUCs in resamples use the Mann-Whitney rank form of the same AUC (tested equal to
``roc_auc_score``), because 100 resamples of sklearn AUCs took ~5 s per report on a 300-image test set.

Several attributes (sex, age group, ...) → call ``fairness_report`` once per attribute; intersections are one attribute
whose values are tuples or joined strings (``sex + "|" + race``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from fairsample.core.errors import FairsampleWarning
from fairsample.core.json_safe import json_safe
from fairsample.evaluation.fairness import (
    _NO_NEGATIVES,
    _NO_POSITIVES,
    _average,
    _check_option,
    _maxmin,
    _min_over_max,
    _prepare,
    _Rates,
    _rates_from_counts,
    _rates_from_fairlearn,
    _targets,
    _warn_undefined,
)
from fairsample.evaluation.fairness_auc import (
    _auc_table,
    _check_min,
    _disparity,
    _prepare_scores,
    _Scored,
    _warn_groups,
    _warn_overall,
)
from fairsample.evaluation.fairness_bootstrap import _check_resampling, _percentile_ci, _resamples
from fairsample.evaluation.fairness_equity import _equity_scale, _nar, _pqd

_SKIPPED_MANY = "bootstrap: metrics undefined in some resamples were skipped there ({items}); CIs use the rest."
Method = Literal["between_groups", "to_overall"]


@dataclass
class FairnessReport:
    """Disaggregated classifier metrics for one sensitive attribute (fairlearn ``MetricFrame`` vocabulary).

    Values are fractions (never ×100); NaN = undefined (see the warnings raised when the report was built).
    """

    attribute: str  # name of the sensitive attribute (index name of ``by_group``)
    overall: dict[str, float]  # metric → value on all samples (gaps, ES values, accuracy, auc)
    by_group: pd.DataFrame  # index = groups; n, accuracy, [auc], selection_rate, tpr, fpr (per class if multiclass)
    group_sizes: dict[Any, int]  # group → number of samples
    ci: dict[str, tuple[float, float]]  # metric of ``overall`` → percentile (low, high); {} when n_resamples = 0
    definitions: dict[str, dict[str, Any]]  # metric → option values used (plus "bootstrap" and "groups")
    classes: list[Any]  # sorted union of labels and predictions
    overall_by_column: dict[str, float] = field(default_factory=dict, repr=False)  # ``by_group`` columns on all rows

    def _values(self) -> pd.DataFrame:
        """``by_group`` without the size column."""
        return self.by_group.drop(columns=["n"])

    def difference(self, method: Method = "between_groups") -> pd.Series:
        """Per column of ``by_group``: max − min over groups, or (``"to_overall"``) max_g |value_g − overall|.

        Example:
            >>> r = fairness_report([0, 1, 0, 1], [0, 1, 1, 1], sensitive_features=["a", "a", "b", "b"],
            ...                     n_resamples=0)
            >>> float(r.difference()["selection_rate"])
            0.5
        """
        _check_option("method", method, ("between_groups", "to_overall"))
        values = self._values()
        if method == "between_groups":
            return values.max() - values.min()
        return (values - pd.Series(self.overall_by_column)).abs().max()

    def ratio(self, method: Method = "between_groups") -> pd.Series:
        """Per column of ``by_group``: min / max over groups, or (``"to_overall"``) min_g min(v_g/o, o/v_g).

        Example:
            >>> r = fairness_report([0, 1, 0, 1], [0, 1, 1, 1], sensitive_features=["a", "a", "b", "b"],
            ...                     n_resamples=0)
            >>> float(r.ratio()["accuracy"])
            0.5
        """
        _check_option("method", method, ("between_groups", "to_overall"))
        values = self._values()
        if method == "between_groups":
            return values.min() / values.max()
        ratios = values / pd.Series(self.overall_by_column)
        return ratios.where(ratios <= 1, 1 / ratios).min()

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (NaN → None, group keys as str): attribute, classes, overall, by_group, group_sizes, ci,
        definitions.

        Example:
            >>> r = fairness_report([0, 1, 0, 1], [0, 1, 1, 1], sensitive_features=["a", "a", "b", "b"],
            ...                     n_resamples=0)
            >>> r.to_dict()["by_group"]["b"]["accuracy"], r.to_dict()["group_sizes"]
            (0.5, {'a': 2, 'b': 2})
        """
        return json_safe(
            {
                "attribute": self.attribute,
                "classes": self.classes,
                "overall": self.overall,
                "by_group": self.by_group.to_dict(orient="index"),
                "group_sizes": self.group_sizes,
                "ci": self.ci,
                "definitions": self.definitions,
            }
        )


def _metrics(
    r: _Rates,
    targets: list[int],
    classes: list[Any],
    groups: list[Any],
    auc: tuple[float, np.ndarray] | None,
    warn: bool,
) -> dict[str, float]:
    """Every overall metric from rates (and AUCs); all NaN when fewer than 2 groups are non-empty."""
    every = list(range(len(classes)))
    out: dict[str, float] = {"accuracy": float(r.acc_all)}
    if auc is not None:
        out["auc"] = float(auc[0])
    enough = int((r.n > 0).sum()) >= 2
    out["dp_gap"] = float(_average(_maxmin(r.sel), targets, classes, "macro"))  # type: ignore[arg-type]
    out["eopp_gap"] = float(_average(_maxmin(r.tpr), targets, classes, "macro"))  # type: ignore[arg-type]
    eodds = np.fmax(_maxmin(r.tpr), _maxmin(r.fpr))
    out["eodds_gap"] = float(_average(eodds, targets, classes, "macro"))  # type: ignore[arg-type]
    es = _equity_scale(r.acc_all, groups, r.acc, higher_is_better=True, alpha=1.0, relative=False, warn=warn)
    out["essp"] = es
    out["nar"] = _nar(r.acc, warn=warn)
    out["pqd"] = _pqd(r.acc, warn=warn)
    out["eom"] = float(_average(_min_over_max(r.tpr), every, classes, "macro"))  # type: ignore[arg-type]
    out["es_acc"] = es
    if auc is not None:
        out["es_auc"] = _equity_scale(
            auc[0], groups, auc[1], higher_is_better=True, alpha=1.0, relative=False, warn=False
        )
        out["auc_disparity_std"] = _disparity(auc[0], auc[1], "std", half=False)
        out["auc_disparity_range"] = _disparity(auc[0], auc[1], "range", half=False)
    if not enough:
        out = {k: (v if k in ("accuracy", "auc") else float("nan")) for k, v in out.items()}
    return out


def _by_group(
    r: _Rates,
    targets: list[int],
    classes: list[Any],
    groups: list[Any],
    attribute: str,
    auc: tuple[float, np.ndarray] | None,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """The ``by_group`` frame and the same columns on all samples."""
    cols: dict[str, np.ndarray] = {"n": r.n.astype(int), "accuracy": r.acc}
    overall: dict[str, float] = {"accuracy": float(r.acc_all)}
    if auc is not None:
        cols["auc"], overall["auc"] = auc[1], float(auc[0])
    for name, table, total in (
        ("selection_rate", r.sel, r.sel_all),
        ("tpr", r.tpr, r.tpr_all),
        ("fpr", r.fpr, r.fpr_all),
    ):
        for k in targets:
            col = name if len(targets) == 1 else f"{name}[{classes[k]}]"
            cols[col], overall[col] = table[:, k], float(total[k])
    return pd.DataFrame(cols, index=pd.Index(groups, name=attribute)), overall


def _definitions(
    d_classes: list[Any],
    targets: list[int],
    attribute: str,
    n_groups: int,
    scores: bool,
    min_per_class: int,
    n_resamples: int,
    confidence: float,
    seed: int,
) -> dict[str, Any]:
    """Option values of every reported metric (METHODS.md §5.13 defaults)."""
    pos = d_classes[targets[0]] if len(targets) == 1 else None  # the resolved class, as dp_gap(pos_label=...)
    defs: dict[str, dict[str, Any]] = {
        "groups": {"attribute": attribute, "n_groups": n_groups, "note": "ES values compare only at equal n_groups"},
        "accuracy": {},
        "dp_gap": {"mode": "maxmin", "average": "macro", "pos_label": pos},
        "eopp_gap": {"average": "macro", "pos_label": pos},
        "eodds_gap": {"agg": "worst_case", "average": "macro", "pos_label": pos},
        "essp": {"delta": "acc"},
        "nar": {"mean": "unweighted over groups"},
        "pqd": {},
        "eom": {"classes": "all", "average": "macro"},
        "es_acc": {"alpha": 1.0},
        "bootstrap": {
            "n_resamples": n_resamples,
            "confidence": confidence,
            "seed": seed,
            "resample": "rows with replacement",
            "interval": "percentile",
        },
    }
    if scores:
        defs["auc"] = {"multi_class": "ovr", "average": "macro"} if len(d_classes) > 2 else {"pos_label": d_classes[1]}
        defs["es_auc"] = {"alpha": 1.0, "min_per_class": min_per_class, "undefined_groups": "excluded"}
        defs["auc_disparity_std"] = {"ddof": 0, "denominator": "auc"}
        defs["auc_disparity_range"] = {"denominator": "auc"}
    return defs


def fairness_report(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    *,
    sensitive_features: ArrayLike,
    scores: ArrayLike | None = None,
    attribute: str = "tone",
    pos_label: Any = None,
    min_per_class: int = 5,
    n_resamples: int = 100,
    confidence: float = 0.95,
    seed: int = 0,
) -> FairnessReport:
    """Overall, by-group and bootstrapped fairness metrics of a classifier for ONE sensitive attribute.

    ``overall`` holds accuracy, dp_gap, eopp_gap, eodds_gap, essp, nar, pqd, eom, es_acc and, with ``scores``, auc,
    es_auc, auc_disparity_std and auc_disparity_range, each equal to the function of the same name with default
    options. Call once per attribute (sex, age group, ...); ES values compare only between attributes with the same
    number of groups.

    Args:
        y_true: ``(N,)`` true class labels (str or int).
        y_pred: ``(N,)`` predicted class labels, same type.
        sensitive_features: ``(N,)`` group value of each sample (one attribute, ≥ 2 groups).
        scores: optional ``(N,)`` / ``(N, 2)`` binary scores or ``(N, K)`` probabilities (columns = sorted classes).
        attribute: attribute name, used as the ``by_group`` index name and in ``definitions``.
        pos_label: class evaluated by the gaps (default: binary → larger label; multiclass → macro over classes).
        min_per_class: minimum positives and negatives per class for a group AUC.
        n_resamples: bootstrap resamples for ``ci`` (0 = no CIs).
        confidence: CI mass in (0, 1).
        seed: seed of the bootstrap row sampler.

    Returns:
        :class:`FairnessReport`.

    Raises:
        ConfigError: mismatched lengths, empty input, fewer than 2 groups, bad scores or options.

    Example:
        >>> r = fairness_report([0, 1, 0, 1], [0, 1, 1, 1], sensitive_features=["a", "a", "b", "b"], attribute="sex",
        ...                     n_resamples=0)
        >>> r.overall["dp_gap"], r.overall["eodds_gap"], r.group_sizes
        (0.5, 1.0, {'a': 2, 'b': 2})
    """
    _check_resampling(n_resamples, confidence, low=0)
    d = _prepare(y_true, y_pred, sensitive_features)
    targets = _targets(d.classes, pos_label)
    k, g = len(d.classes), len(d.groups)
    scored: _Scored | None = None
    if scores is not None:
        _check_min(min_per_class)
        codes, s, _ = _prepare_scores(d.y_true, scores, d.classes)
        scored = _Scored(codes, s, d.classes, d.group_codes, d.groups)

    # 1. point estimates through fairlearn MetricFrame and scikit-learn
    rates = _rates_from_fairlearn(d)
    every = list(range(k))
    _warn_undefined("fairness_report", "TPR", _NO_POSITIVES, rates.tpr, rates.n, every, d.classes, d.groups)
    _warn_undefined("fairness_report", "FPR", _NO_NEGATIVES, rates.fpr, rates.n, targets, d.classes, d.groups)
    auc = None
    if scored is not None:
        auc = _auc_table(scored.codes, scored.scores, d.group_codes, k, g, min_per_class)
        _warn_overall(scored, auc[0], stacklevel=2)
        _warn_groups(scored, auc[1], min_per_class, stacklevel=2)
    overall = _metrics(rates, targets, d.classes, d.groups, auc, warn=True)
    by_group, overall_by_column = _by_group(rates, targets, d.classes, d.groups, attribute, auc)

    # 2. bootstrap: the same metrics on resampled rows, rates from confusion counts
    ci: dict[str, tuple[float, float]] = {}
    if n_resamples:
        boot: dict[str, list[float]] = {name: [] for name in overall}
        for idx in _resamples(len(d.true_codes), n_resamples, seed):
            r = _rates_from_counts(d.true_codes[idx], d.pred_codes[idx], d.group_codes[idx], k, g)
            a = None
            if scored is not None:
                a = _auc_table(
                    scored.codes[idx], scored.scores[idx], d.group_codes[idx], k, g, min_per_class, fast=True
                )
            for name, value in _metrics(r, targets, d.classes, d.groups, a, warn=False).items():
                if math.isfinite(value):
                    boot[name].append(value)
        ci = {name: _percentile_ci(values, confidence) for name, values in boot.items()}
        skipped = [
            f"{name} {n_resamples - len(v)}/{n_resamples}"
            for name, v in boot.items()
            if len(v) < n_resamples and math.isfinite(overall[name])
        ]
        if skipped:
            warnings.warn(_SKIPPED_MANY.format(items=", ".join(skipped)), FairsampleWarning, stacklevel=2)

    return FairnessReport(
        attribute=attribute,
        overall=overall,
        by_group=by_group,
        group_sizes=dict(zip(d.groups, rates.n.astype(int).tolist(), strict=True)),
        ci=ci,
        definitions=_definitions(
            d.classes, targets, attribute, g, scored is not None, min_per_class, n_resamples, confidence, seed
        ),
        classes=d.classes,
        overall_by_column=overall_by_column,
    )
