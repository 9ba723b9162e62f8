"""Dynamic inverse-validation-accuracy sampling weights for downstream training (METHODS.md §3.7).

:class:`Reweighter` is FairSkin's dynamic reweighting as coded by FairGen's ``classify_reweight_*.py``, with the
project's ``per_group_share`` mode, EMA smoothing and a ratio cap; :func:`inverse_accuracy_coefficients` is its
per-epoch formula.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import WeightedRandomSampler

from fairsample.core.errors import ConfigError
from fairsample.data.tables import natural_key

__all__ = ["REWEIGHT_MODES", "Reweighter", "inverse_accuracy_coefficients"]

ReweightMode = Literal["per_sample", "per_group_share"]

REWEIGHT_MODES: tuple[str, str] = ("per_sample", "per_group_share")

_BAD_MODE = "`mode` must be one of {allowed}, got {value!r}."
_BAD_SMOOTHING = "`smoothing` must be a number in [0, 1) (0 = no smoothing), got {value!r}."
_BAD_MAX_RATIO = "`max_ratio` must be a number >= 1 (math.inf = no cap), got {value!r}."
_BAD_EPS = "`eps` must be a number > 0, got {value!r}."
_NO_GROUPS = "`groups` is empty; give one group value per training sample."
_MISSING_ACCURACY = (
    "`accuracy` lacks group(s) {missing}; give the validation accuracy of every training group {groups}."
)
_BAD_ACCURACY = "`accuracy` of group {group!r} must be a fraction in [0, 1], got {value!r}."


def inverse_accuracy_coefficients(
    accuracy: Mapping[str, float], *, eps: float = 1e-6, max_ratio: float = 5.0
) -> dict[str, float]:
    """Normalised inverse accuracies c_g = (A_g + eps)^-1 / Σ_h (A_h + eps)^-1, capped at max c / min c ≤ max_ratio.

    The cap raises every coefficient below ``max(c) / max_ratio`` to that floor, then renormalises (FairGen
    ``classify_reweight_*.py`` form, on fractions rather than percentages; the cap is fairsample's, METHODS.md §3.7).

    Args:
        accuracy: ``{group: validation accuracy}``, fractions in [0, 1].
        eps: added to every accuracy (> 0) so a group at 0 % stays finite.
        max_ratio: largest allowed ``max(c) / min(c)`` (>= 1; ``math.inf`` disables the cap).

    Returns:
        ``{group: c_g}`` in the input order, summing to 1.

    Example:
        >>> c = inverse_accuracy_coefficients({"a": 0.8, "b": 0.4}, eps=1e-12)
        >>> {g: round(v, 4) for g, v in c.items()}
        {'a': 0.3333, 'b': 0.6667}
        >>> c = inverse_accuracy_coefficients({"a": 1.0, "b": 0.1}, max_ratio=5.0)
        >>> round(c["b"] / c["a"], 6)
        5.0
    """
    _check_positive(eps, _BAD_EPS)
    _check_max_ratio(max_ratio)
    for g, a in accuracy.items():
        if isinstance(a, bool) or not isinstance(a, int | float | np.number) or not 0.0 <= float(a) <= 1.0:
            raise ConfigError(_BAD_ACCURACY.format(group=g, value=a))
    inv = {g: 1.0 / (float(a) + eps) for g, a in accuracy.items()}
    if math.isfinite(max_ratio) and inv:
        floor = max(inv.values()) / max_ratio
        inv = {g: max(v, floor) for g, v in inv.items()}
    total = sum(inv.values())
    return {g: v / total for g, v in inv.items()}


class Reweighter:
    """Dynamic inverse-validation-accuracy sampling weights for one training set (METHODS.md §3.7).

    A tiny stateful helper in the training loop (``propose`` = :meth:`weights` / :meth:`sampler`, ``observe`` =
    :meth:`observe`). It holds one smoothed coefficient per group, c̄_g (summing to 1):

    - before the first observation (epoch 0) every c̄_g = 1/G ("uniform");
    - after each epoch, from the per-group validation accuracies A_g: c_g = capped (A_g + eps)^-1 / Σ(…)^-1
      (:func:`inverse_accuracy_coefficients`), then c̄ ← smoothing · c̄ + (1 − smoothing) · c;
    - per-sample weight of a sample in group g: ``per_sample`` → c̄_g (FairGen code: group g draws ∝ n_g · c̄_g, so
      big groups still dominate); ``per_group_share`` (default) → c̄_g / n_g (group g draws ∝ c̄_g).

    Epoch 0 is therefore the code's uniform per-sample weighting in ``per_sample`` mode and group-balanced sampling in
    ``per_group_share`` mode. The ratio cap holds after smoothing too: max c̄ / min c̄ ≤ ``max_ratio``, i.e. the
    per-sample weight ratio (``per_sample``) or the per-group sampling-mass ratio (``per_group_share``).

    Args:
        groups: ``N`` group values, one per training sample (row order of the training set).
        mode: ``"per_group_share"`` (fairsample default) or ``"per_sample"`` (FairGen code).
        smoothing: EMA factor in [0, 1); 0 uses each epoch's coefficients as they are.
        max_ratio: cap on max c / min c (>= 1; ``math.inf`` disables it).
        eps: added to accuracies (fractions) before inverting.

    Attributes:
        groups: distinct group values, natural order.
        counts: ``{group: n_g}``.
        coefficients: ``{group: c̄_g}`` used for the next epoch's draws.
        n_observed: number of :meth:`observe` calls so far.

    Example:
        >>> rw = Reweighter(["a", "a", "a", "b"], mode="per_group_share", smoothing=0.5)
        >>> rw.weights().round(3).tolist()            # epoch 0: c = (1/2, 1/2) -> 1/2 / n_g
        [0.167, 0.167, 0.167, 0.5]
        >>> rw.observe({"a": 0.75, "b": 0.25})      # raw c = (1/4, 3/4); EMA with (1/2, 1/2)
        >>> {g: round(v, 3) for g, v in rw.coefficients.items()}, {g: round(v, 3) for g, v in rw.group_mass().items()}
        ({'a': 0.375, 'b': 0.625}, {'a': 0.375, 'b': 0.625})
    """

    def __init__(
        self,
        groups: Sequence[str],
        *,
        mode: ReweightMode = "per_group_share",
        smoothing: float = 0.5,
        max_ratio: float = 5.0,
        eps: float = 1e-6,
    ) -> None:
        if mode not in REWEIGHT_MODES:
            raise ConfigError(_BAD_MODE.format(allowed=list(REWEIGHT_MODES), value=mode))
        if isinstance(smoothing, bool) or not isinstance(smoothing, int | float) or not 0.0 <= smoothing < 1.0:
            raise ConfigError(_BAD_SMOOTHING.format(value=smoothing))
        _check_max_ratio(max_ratio)
        _check_positive(eps, _BAD_EPS)
        values = [str(g) for g in groups]
        if not values:
            raise ConfigError(_NO_GROUPS)
        self.mode: ReweightMode = mode
        self.smoothing = float(smoothing)
        self.max_ratio = float(max_ratio)
        self.eps = float(eps)
        self.groups: list[str] = sorted(set(values), key=natural_key)
        index = {g: k for k, g in enumerate(self.groups)}
        self._codes = np.fromiter((index[g] for g in values), dtype=np.int64, count=len(values))
        n = np.bincount(self._codes, minlength=len(self.groups))
        self.counts: dict[str, int] = {g: int(n[k]) for k, g in enumerate(self.groups)}
        self.coefficients: dict[str, float] = {g: 1.0 / len(self.groups) for g in self.groups}
        self.n_observed = 0

    def __len__(self) -> int:
        return len(self._codes)

    def group_weights(self) -> dict[str, float]:
        """``{group: per-sample weight}`` for the next epoch (c̄_g, or c̄_g / n_g in ``per_group_share`` mode)."""
        if self.mode == "per_sample":
            return dict(self.coefficients)
        return {g: c / self.counts[g] for g, c in self.coefficients.items()}

    def weights(self) -> np.ndarray:
        """``(N,) float64`` per-sample weights for the next epoch, in training-set row order."""
        per_group = self.group_weights()
        return np.array([per_group[g] for g in self.groups], dtype=np.float64)[self._codes]

    def group_mass(self) -> dict[str, float]:
        """``{group: expected share of the next epoch's draws}`` = n_g · w_g / Σ_h n_h · w_h (sums to 1)."""
        per_group = self.group_weights()
        mass = {g: self.counts[g] * w for g, w in per_group.items()}
        total = sum(mass.values())
        return {g: m / total for g, m in mass.items()}

    def observe(self, accuracy: Mapping[str, float]) -> None:
        """Update the coefficients from one epoch's per-group validation accuracies (fractions in [0, 1]).

        Raises:
            ConfigError: a training group is missing from ``accuracy`` or an accuracy is outside [0, 1]. Keys that
                are not training groups are ignored.
        """
        missing = [g for g in self.groups if g not in accuracy]
        if missing:
            raise ConfigError(_MISSING_ACCURACY.format(missing=missing, groups=self.groups))
        # 1. capped normalised inverse accuracies
        raw = inverse_accuracy_coefficients(
            {g: accuracy[g] for g in self.groups}, eps=self.eps, max_ratio=self.max_ratio
        )
        # 2. EMA with the previous coefficients
        a = self.smoothing
        self.coefficients = {g: a * self.coefficients[g] + (1.0 - a) * raw[g] for g in self.groups}
        self.n_observed += 1

    def sampler(self, generator: torch.Generator | None = None) -> WeightedRandomSampler:
        """A ``WeightedRandomSampler`` over the current weights: ``N`` draws with replacement from ``generator``."""
        return WeightedRandomSampler(
            self.weights().tolist(), num_samples=len(self), replacement=True, generator=generator
        )

    def draw(self, generator: torch.Generator | None = None) -> Tensor:
        """One epoch of row indices, ``(N,) int64``, drawn by :meth:`sampler`."""
        return torch.tensor(list(self.sampler(generator)), dtype=torch.int64)


def _check_positive(value: Any, template: str) -> None:
    """A finite number > 0, else ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value) and value > 0):
        raise ConfigError(template.format(value=value))


def _check_max_ratio(value: Any) -> None:
    """A number >= 1 (inf allowed), else ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value) or value < 1:
        raise ConfigError(_BAD_MAX_RATIO.format(value=value))
