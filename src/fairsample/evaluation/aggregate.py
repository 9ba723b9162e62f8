"""Small aggregation helpers shared by the evaluation stages: row keys, counts, mean ± sd, the metric order.

They sit below :mod:`fairsample.evaluation.evaluate` and :mod:`fairsample.evaluation.rows`, which both use them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fairsample.core.errors import ConfigError

if TYPE_CHECKING:
    from fairsample.data.folder import FolderDataset

#: fairness metrics aggregated over seeds, in the order of the report tables.
FAIRNESS_METRICS: tuple[str, ...] = (
    "accuracy",
    "auc",
    "dp_gap",
    "eopp_gap",
    "eodds_gap",
    "essp",
    "nar",
    "es_acc",
    "es_auc",
)


def _keys(ds: FolderDataset, columns: Sequence[str]) -> np.ndarray:
    """``"col=value,..."`` of every row (the group keys of :mod:`fairsample.evaluation.generative`)."""
    values = [ds.frame[c].astype(str).tolist() for c in columns]
    rows = zip(*values, strict=True)
    return np.asarray([",".join(f"{c}={v}" for c, v in zip(columns, row, strict=True)) for row in rows], dtype=object)


def _cell_columns(real: FolderDataset, attrs: Sequence[str]) -> tuple[str, ...]:
    return (*(real.spec.groups or attrs), real.spec.label)


def _counts(keys: np.ndarray) -> dict[str, int]:
    uniq, n = np.unique(keys.astype(str), return_counts=True)
    order = sorted(range(len(uniq)), key=lambda j: _text_key(str(uniq[j])))
    return {str(uniq[j]): int(n[j]) for j in order}


def _mean_sd(values: Sequence[float | None]) -> dict[str, Any]:
    """``{"mean", "sd" (ddof=1), "n" (finite values), "values"}``; undefined parts are None."""
    vals = [None if v is None or not math.isfinite(float(v)) else float(v) for v in values]
    finite = np.asarray([v for v in vals if v is not None], dtype=np.float64)
    return {
        "mean": float(finite.mean()) if finite.size else None,
        "sd": float(finite.std(ddof=1)) if finite.size > 1 else None,
        "n": int(finite.size),
        "values": vals,
    }


def _text_key(text: str) -> tuple:
    """Natural order of ``"a=x,b=y"`` texts, part by part."""
    return tuple(_natural_key(part.split("=", 1)[-1]) for part in text.split(","))


def _natural_key(value: str) -> tuple[int, float, str]:
    """:func:`fairsample.data.tables.natural_key` (imported lazily)."""
    from fairsample.data.tables import natural_key as key

    return key(value)


#: fewest classifier seeds a mean ± sd is reported over (unless allowed)
MIN_SEEDS = 3
_BAD_SEEDS = "`seeds` must be distinct integers >= 0, got {value!r}."
_FEW_SEEDS = (
    "`seeds` has {n} seed(s) {value!r}; mean ± sd needs at least {k} (e.g. seeds=(0, 1, 2)), or pass "
    "allow_few_seeds=True (CLI: --allow-few-seeds)."
)


def check_seeds(seeds: Sequence[int], allow_few_seeds: bool) -> list[int]:
    """Classifier seeds: distinct ints >= 0, at least :data:`MIN_SEEDS` unless ``allow_few_seeds`` (the one check used
    by :func:`run_protocol` and :func:`fairsample.evaluation.evaluate.evaluate`).

    Example:
        >>> check_seeds((0, 1, 2), False)
        [0, 1, 2]
    """
    if not isinstance(seeds, Sequence) or isinstance(seeds, str):
        raise ConfigError(_BAD_SEEDS.format(value=seeds))
    values = list(seeds)
    ints = all(not isinstance(s, bool) and isinstance(s, int | np.integer) and s >= 0 for s in values)
    if not values or not ints or len(set(values)) != len(values):
        raise ConfigError(_BAD_SEEDS.format(value=seeds))
    if len(values) < MIN_SEEDS and not allow_few_seeds:
        raise ConfigError(_FEW_SEEDS.format(n=len(values), value=values, k=MIN_SEEDS))
    return [int(s) for s in values]
