"""Percentile bootstrap confidence intervals over test-set rows (FairDiffusion: 100 resamples): ``bootstrap_ci``."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from fairsample.core.errors import ConfigError, FairsampleWarning

_BAD_RESAMPLES = "`n_resamples` must be an integer >= {low}, got {value!r}."
_BAD_CONFIDENCE = "`confidence` must be a number strictly between 0 and 1, got {value!r}."
_BOOT_LEN = "`{name}` has {m} rows but `y_true` has {n}; pass one row per sample."
_BOOT_EMPTY = "`y_true` is empty (0 samples); there is nothing to resample."
_SKIPPED = "bootstrap: {metric} was undefined in {k} of {n} resamples, which were skipped; the CI uses the other {m}."


def _check_resampling(n_resamples: int, confidence: float, *, low: int = 1) -> None:
    """ConfigError unless ``n_resamples`` ≥ low and 0 < ``confidence`` < 1."""
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int | np.integer) or n_resamples < low:
        raise ConfigError(_BAD_RESAMPLES.format(low=low, value=n_resamples))
    if isinstance(confidence, bool) or not isinstance(confidence, int | float) or not 0 < confidence < 1:
        raise ConfigError(_BAD_CONFIDENCE.format(value=confidence))


def _resamples(n: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """``n_resamples`` index arrays of ``n`` rows drawn with replacement from one ``np.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    for _ in range(n_resamples):
        yield rng.integers(0, n, size=n)


def _percentile_ci(values: list[float], confidence: float) -> tuple[float, float]:
    """Percentile interval (linear interpolation) of the finite values; (nan, nan) when there are none."""
    if not values:
        return float("nan"), float("nan")
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(np.asarray(values, dtype=float), [tail, 100.0 - tail])
    return float(low), float(high)


def _warn_skipped(metric: str, skipped: int, n_resamples: int, stacklevel: int) -> None:
    """FairsampleWarning when some resamples had an undefined metric."""
    if skipped:
        warnings.warn(
            _SKIPPED.format(metric=metric, k=skipped, n=n_resamples, m=n_resamples - skipped),
            FairsampleWarning,
            stacklevel=stacklevel,
        )


def _rows(name: str, values: Any, n: int | None) -> np.ndarray:
    """A numpy array indexable by rows; ConfigError when its length differs from ``n``."""
    arr = values.to_numpy() if isinstance(values, pd.Series | pd.DataFrame) else np.asarray(values)
    if n is not None and (arr.ndim == 0 or len(arr) != n):
        raise ConfigError(_BOOT_LEN.format(name=name, m=0 if arr.ndim == 0 else len(arr), n=n))
    return arr


def bootstrap_ci(
    metric_fn: Callable[..., float],
    y_true: ArrayLike,
    y_pred: ArrayLike,
    sensitive_features: ArrayLike,
    *,
    n_resamples: int = 100,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``metric_fn(y_true, y_pred, sensitive_features=...)`` over resampled rows.

    Rows are drawn with replacement (not stratified by group) from ``np.random.default_rng(seed)``, so the interval is
    deterministic given ``seed``. A resample where the metric is undefined (NaN, or the function raises ``ValueError``,
    e.g. ConfigError for a resample with a single group) is skipped with one FairsampleWarning; FairsampleWarnings
    raised inside resamples are silenced (the point estimate already reports them).

    Args:
        metric_fn: a fairlearn-style metric ``(y_true, y_pred, *, sensitive_features) -> float``, e.g. ``dp_gap`` or
            ``es_auc`` (then ``y_pred`` holds scores).
        y_true: ``(N,)`` labels.
        y_pred: ``(N,)`` predictions or ``(N, ...)`` scores; rows are resampled together with ``y_true``.
        sensitive_features: ``(N,)`` group values.
        n_resamples: number of resamples ≥ 1 (FairDiffusion uses 100).
        confidence: interval mass in (0, 1).
        seed: seed of the row sampler.

    Returns:
        ``(low, high)`` percentiles; ``(nan, nan)`` if the metric is undefined in every resample.

    Raises:
        ConfigError: mismatched lengths, empty input, bad ``n_resamples`` or ``confidence``.

    Example:
        >>> from fairsample.evaluation.fairness import dp_gap
        >>> y = [0, 1] * 20
        >>> low, high = bootstrap_ci(dp_gap, y, y, ["a", "b"] * 20, n_resamples=20, seed=1)
        >>> 0.0 <= low <= high <= 1.0
        True
    """
    _check_resampling(n_resamples, confidence)
    yt = _rows("y_true", y_true, None)
    if len(yt) == 0:
        raise ConfigError(_BOOT_EMPTY)
    yp = _rows("y_pred", y_pred, len(yt))
    sf = _rows("sensitive_features", sensitive_features, len(yt))
    values: list[float] = []
    for idx in _resamples(len(yt), n_resamples, seed):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FairsampleWarning)
                value = float(metric_fn(yt[idx], yp[idx], sensitive_features=sf[idx]))
        except ValueError:
            continue
        if math.isfinite(value):
            values.append(value)
    _warn_skipped(getattr(metric_fn, "__name__", "the metric"), n_resamples - len(values), n_resamples, stacklevel=3)
    return _percentile_ci(values, confidence)
