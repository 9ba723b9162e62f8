"""Downstream protocols: classifiers trained on real and/or synthetic images, tested on real images (METHODS.md §3.7).

- :class:`Reweighter`: dynamic inverse-validation-accuracy sampling weights (FairSkin's dynamic reweighting as coded by
  FairGen's ``classify_reweight_*.py``), with the project's ``per_group_share`` mode, EMA smoothing and a ratio cap.
- :func:`train_downstream`: one :class:`~fairsample.evaluation.classifiers.SmallCNN` whose checkpoint is the
  best-*validation* epoch or a pre-registered one (METHODS.md §5.6); it never sees test data.
- :func:`run_protocol`: ``real_only`` / ``real_plus_synthetic`` / ``synthetic_only`` over several seeds on one fixed
  real split; returns JSON-safe test predictions for the fairness metrics (``fairsample.evaluation.fairness``) plus a
  mean ± sd accuracy summary.
- :func:`attribute_classifier_ber`: balanced error rate of a fresh attribute classifier (METHODS.md §5.11).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import Tensor
from torch.utils.data import WeightedRandomSampler

from fairsample.core.errors import ConfigError, DataError
from fairsample.data.folder import FolderDataset
from fairsample.data.splits import split_indices
from fairsample.data.tables import natural_key
from fairsample.evaluation.aggregate import _BAD_SEEDS, _FEW_SEEDS, MIN_SEEDS, _mean_sd, check_seeds  # noqa: F401
from fairsample.evaluation.classifiers import TrainedClassifier, fit_classifier

__all__ = [
    "PROTOCOLS",
    "REWEIGHT_MODES",
    "BERResult",
    "DownstreamResult",
    "EpochRecord",
    "Reweighter",
    "attribute_classifier_ber",
    "inverse_accuracy_coefficients",
    "run_protocol",
    "select_epoch",
    "train_downstream",
]

ReweightMode = Literal["per_sample", "per_group_share"]
Protocol = Literal["real_only", "real_plus_synthetic", "synthetic_only"]
Select = Literal["val", "last"] | int

REWEIGHT_MODES: tuple[str, str] = ("per_sample", "per_group_share")
PROTOCOLS: tuple[str, str, str] = ("real_only", "real_plus_synthetic", "synthetic_only")
#: default number of seeds per protocol; fewer needs ``allow_few_seeds=True``

_BAD_MODE = "`mode` must be one of {allowed}, got {value!r}."
_BAD_REWEIGHT = "`reweight` must be None or one of {allowed}, got {value!r}."
_BAD_SMOOTHING = "`smoothing` must be a number in [0, 1) (0 = no smoothing), got {value!r}."
_BAD_MAX_RATIO = "`max_ratio` must be a number >= 1 (math.inf = no cap), got {value!r}."
_BAD_EPS = "`eps` must be a number > 0, got {value!r}."
_NO_GROUPS = "`groups` is empty; give one group value per training sample."
_MISSING_ACCURACY = (
    "`accuracy` lacks group(s) {missing}; give the validation accuracy of every training group {groups}."
)
_BAD_ACCURACY = "`accuracy` of group {group!r} must be a fraction in [0, 1], got {value!r}."
_BAD_SELECT = "`select` must be 'val', 'last' or an epoch index in [0, {last}], got {value!r}."
_BAD_EPOCHS = "`epochs` must be an integer >= 1, got {value!r}."
_EMPTY_HISTORY = "`val_accuracy` is empty; train at least one epoch before selecting."
_LENGTHS = "{split} inputs disagree in length: {images} images, {labels} labels, {groups} group values."
_EMPTY_SPLIT = "the {split} set is empty; {fix}"
_VAL_MISSING_GROUP = (
    "reweighting needs the validation accuracy of every training group, but group(s) {missing} have no validation "
    "images; add some or train with reweight=None."
)
_BAD_PROTOCOL = "`protocol` must be one of {allowed}, got {value!r}."
_NEED_SYNTHETIC = "protocol={protocol!r} needs a synthetic dataset; pass `synthetic=` or use protocol='real_only'."
_NO_ATTRIBUTE = "`attribute` is required: the real dataset's spec names no group columns."
_MISSING_COLUMN = "the {which} dataset has no {what} column {column!r} (columns: {present}); fix the spec or metadata."
_UNSEEN_VALUES = (
    "synthetic {what} value(s) {values} are not in the real data (real values: {real}); drop or relabel those rows."
)
_BAD_FRACTION = "`test_fraction` must be a number in (0, 1), got {value!r}."
_PRELOADED = (
    "`{name}` has {m} images of shape {shape} but the {which} dataset has {n} rows at size {size}; pass every row, "
    "(N, size, size, 3) uint8 in row order, or None."
)
_BER_LENGTHS = "`images` has {n} rows but `s_labels` has {m}; give one attribute value per image."
_BER_ONE_CLASS = "`s_labels` has a single value ({value!r}); BER needs at least two attribute values."
_BER_SMALL_CLASS = (
    "attribute value(s) {values} have fewer than 2 images; each value needs one in the train and one in the test part."
)
_BER_SPLIT = "cannot split {n} images into train/test with test_fraction={fraction} ({detail}); use more images."


# ------------------------------------------------------------------------------------------------------ reweighting


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


# ------------------------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class EpochRecord:
    """What one training epoch did and how the model scored on validation afterwards."""

    epoch: int  # 0-based epoch index
    train_loss: float  # mean cross-entropy over the epoch's draws
    val_accuracy: float  # overall validation accuracy, fraction
    val_accuracy_by_group: dict[str, float]  # validation accuracy per group value, fractions
    sampling_mass: dict[str, float]  # expected share of this epoch's training draws per group (sums to 1)
    sampling_coefficients: dict[str, float] | None  # Reweighter c̄_g used for this epoch; None = plain shuffling

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return {
            "epoch": self.epoch,
            "train_loss": self.train_loss,
            "val_accuracy": self.val_accuracy,
            "val_accuracy_by_group": dict(self.val_accuracy_by_group),
            "sampling_mass": dict(self.sampling_mass),
            "sampling_coefficients": None if self.sampling_coefficients is None else dict(self.sampling_coefficients),
        }


@dataclass
class DownstreamResult:
    """A downstream classifier at its selected epoch, with the per-epoch history that chose it."""

    classifier: TrainedClassifier  # weights of epoch `selected_epoch`
    history: list[EpochRecord]  # one record per trained epoch
    selected_epoch: int  # 0-based index into history
    select: str | int  # the rule that chose it: "val", "last" or a pre-registered epoch
    reweight: str | None = None  # Reweighter mode, or None
    classes: list[str] = field(default_factory=list)  # class names, index k <-> column k of probabilities

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (no weights)."""
        return {
            "selected_epoch": self.selected_epoch,
            "select": self.select,
            "reweight": self.reweight,
            "classes": list(self.classes),
            "history": [r.to_dict() for r in self.history],
        }


def select_epoch(val_accuracy: Sequence[float], select: Select = "val") -> int:
    """The epoch a checkpoint rule picks (METHODS.md §5.6: validation-selected or pre-registered, never test).

    Args:
        val_accuracy: validation accuracy per epoch, epoch 0 first.
        select: ``"val"`` → the best validation accuracy, ties → the earlier epoch; ``"last"`` → the final epoch;
            an int → that pre-registered epoch (0-based).

    Returns:
        The 0-based epoch index.

    Raises:
        ConfigError: empty history or an invalid ``select``.

    Example:
        >>> select_epoch([0.5, 0.7, 0.7, 0.6]), select_epoch([0.5, 0.7], "last"), select_epoch([0.5, 0.7], 0)
        (1, 1, 0)
    """
    if len(val_accuracy) == 0:
        raise ConfigError(_EMPTY_HISTORY)
    _check_select(select, len(val_accuracy))
    if select == "last":
        return len(val_accuracy) - 1
    if select == "val":
        return int(np.argmax(np.asarray(val_accuracy, dtype=np.float64)))  # first maximum = earlier epoch on ties
    return int(select)


def _check_select(select: Any, epochs: int) -> None:
    """'val', 'last' or an int epoch in [0, epochs - 1], else ConfigError."""
    if select in ("val", "last") and isinstance(select, str):
        return
    if isinstance(select, bool) or not isinstance(select, int | np.integer) or not 0 <= select < epochs:
        raise ConfigError(_BAD_SELECT.format(last=epochs - 1, value=select))


def _accuracy_by_group(y_true: Sequence[str], y_pred: Sequence[str], groups: Sequence[str]) -> dict[str, float]:
    """Plain accuracy within each group value (natural order)."""
    correct = np.asarray(y_true, dtype=object) == np.asarray(y_pred, dtype=object)
    g = np.asarray(groups, dtype=object)
    return {v: float(correct[g == v].mean()) for v in sorted(set(groups), key=natural_key)}


def train_downstream(
    train_images: np.ndarray | Tensor,
    train_labels: Sequence[str],
    train_groups: Sequence[str],
    val_images: np.ndarray | Tensor,
    val_labels: Sequence[str],
    val_groups: Sequence[str],
    *,
    reweight: ReweightMode | None = None,
    epochs: int = 10,
    seed: int = 0,
    select: Select = "val",
    classes: Sequence[str] | None = None,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    augment_shift: int = 2,
    smoothing: float = 0.5,
    max_ratio: float = 5.0,
) -> DownstreamResult:
    """Train a :class:`~fairsample.evaluation.classifiers.SmallCNN` and keep the validation-selected or pre-registered
    epoch.

    Each epoch draws ``N`` training rows: a plain permutation (``reweight=None``) or, with a :class:`Reweighter`,
    ``N`` draws with replacement whose weights are updated from the per-group validation accuracy after every
    epoch (epoch 0 uses uniform coefficients). Only the validation set is ever scored; test data never enters.

    Args:
        train_images: ``(N, H, W, 3)`` uint8 or ``(N, 3, H, W)`` float in [0, 1].
        train_labels: ``N`` class names.
        train_groups: ``N`` sensitive-attribute values (what ``reweight`` balances).
        val_images, val_labels, val_groups: the validation set, same formats (``M >= 1`` rows).
        reweight: ``None``, ``"per_group_share"`` or ``"per_sample"`` (:class:`Reweighter` modes).
        epochs: training epochs (>= 1).
        seed: the only seed (initialisation, draws, augmentation).
        select: ``"val"`` (best validation accuracy, ties → earlier), ``"last"`` or a pre-registered 0-based epoch.
        classes: class list (default: train ∪ val labels, natural order).
        batch_size, learning_rate, augment_shift: optimisation settings (see ``train_classifier``).
        smoothing, max_ratio: :class:`Reweighter` settings.

    Returns:
        :class:`DownstreamResult` with the classifier at ``selected_epoch`` and one :class:`EpochRecord` per epoch.

    Raises:
        ConfigError: bad ``reweight``, ``epochs``, ``select`` or inputs.
        DataError: mismatched lengths, an empty set, or (with ``reweight``) a training group absent from validation.

    Example:
        >>> x = np.zeros((8, 8, 8, 3), np.uint8); x[4:] = 255
        >>> y, s = ["a"] * 4 + ["b"] * 4, ["F", "M"] * 4
        >>> res = train_downstream(x, y, s, x, y, s, reweight="per_group_share", epochs=3, batch_size=8)
        >>> len(res.history), res.selected_epoch == select_epoch([r.val_accuracy for r in res.history])
        (3, True)
    """
    # 1. validate
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(_BAD_EPOCHS.format(value=epochs))
    _check_select(select, epochs)
    if reweight is not None and reweight not in REWEIGHT_MODES:
        raise ConfigError(_BAD_REWEIGHT.format(allowed=list(REWEIGHT_MODES), value=reweight))
    for split, xs, ys, gs in (
        ("training", train_images, train_labels, train_groups),
        ("validation", val_images, val_labels, val_groups),
    ):
        if not len(xs) == len(ys) == len(gs):
            raise DataError(_LENGTHS.format(split=split, images=len(xs), labels=len(ys), groups=len(gs)))
        if len(xs) == 0:
            raise DataError(_EMPTY_SPLIT.format(split=split, fix="give at least one image."))
    train_labels = [str(v) for v in train_labels]
    val_labels = [str(v) for v in val_labels]
    train_groups = [str(v) for v in train_groups]
    val_groups = [str(v) for v in val_groups]
    if classes is None:
        classes = sorted(set(train_labels) | set(val_labels), key=natural_key)
    reweighter = None
    if reweight is not None:
        reweighter = Reweighter(train_groups, mode=reweight, smoothing=smoothing, max_ratio=max_ratio)
        present = set(val_groups)
        missing = [g for g in reweighter.groups if g not in present]
        if missing:
            raise DataError(_VAL_MISSING_GROUP.format(missing=missing))
    plain_mass = {g: float(np.mean(np.asarray(train_groups) == g)) for g in sorted(set(train_groups), key=natural_key)}
    history: list[EpochRecord] = []
    states: list[dict[str, Tensor]] = []
    used: dict[int, tuple[dict[str, float], dict[str, float] | None]] = {}

    def epoch_indices(epoch: int, generator: torch.Generator) -> Tensor:
        assert reweighter is not None
        used[epoch] = (reweighter.group_mass(), dict(reweighter.coefficients))
        return reweighter.draw(generator)

    def on_epoch_end(epoch: int, clf: TrainedClassifier, loss: float) -> None:
        # 2. score validation only, record, snapshot
        pred = clf.predict(val_images)
        acc = float(np.mean(np.asarray(pred, dtype=object) == np.asarray(val_labels, dtype=object)))
        by_group = _accuracy_by_group(val_labels, pred, val_groups)
        mass, coefficients = used.get(epoch, (plain_mass, None))
        history.append(EpochRecord(epoch, float(loss), acc, by_group, mass, coefficients))
        states.append({k: v.detach().clone() for k, v in clf.model.state_dict().items()})
        # 3. next epoch's weights from this epoch's validation accuracy
        if reweighter is not None:
            reweighter.observe(by_group)

    clf = fit_classifier(
        train_images,
        train_labels,
        classes=classes,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        augment_shift=augment_shift,
        epoch_indices=epoch_indices if reweighter is not None else None,
        on_epoch_end=on_epoch_end,
    )
    # 4. load the selected checkpoint
    chosen = select_epoch([r.val_accuracy for r in history], select)
    clf.model.load_state_dict(states[chosen])
    clf.model.eval()
    return DownstreamResult(clf, history, chosen, select, reweight, list(clf.classes))


# ------------------------------------------------------------------------------------------------------ protocols


def _pixels(ds: FolderDataset, rows: np.ndarray, size: int) -> np.ndarray:
    """``(n, size, size, 3) uint8`` images of the given rows."""
    if len(rows) == 0:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack([np.asarray(ds.load_image(int(r), size=size), np.uint8) for r in rows])


def _check_columns(ds: FolderDataset, which: str, label: str, attribute: str) -> None:
    """The label and attribute columns exist, else a DataError naming the missing one."""
    for what, column in (("label", label), ("attribute", attribute)):
        if column not in ds.frame.columns:
            raise DataError(
                _MISSING_COLUMN.format(which=which, what=what, column=column, present=list(ds.frame.columns))
            )


def _check_values(real: FolderDataset, synthetic: FolderDataset, attribute: str) -> None:
    """Every synthetic label and attribute value occurs in the real data (one-line DataError otherwise)."""
    for what, rcol, scol in (("label", real.spec.label, synthetic.spec.label), (attribute, attribute, attribute)):
        real_values = set(real.frame[rcol].astype(str))
        unseen = sorted(set(synthetic.frame[scol].astype(str)) - real_values, key=natural_key)
        if unseen:
            raise DataError(_UNSEEN_VALUES.format(what=what, values=unseen, real=sorted(real_values, key=natural_key)))


def _counts(values: Sequence[str]) -> dict[str, int]:
    """``{value: count}`` in natural order."""
    arr = np.asarray(values, dtype=object)
    return {v: int((arr == v).sum()) for v in sorted(set(values), key=natural_key)}


def run_protocol(
    real: FolderDataset,
    synthetic: FolderDataset | None = None,
    *,
    protocol: Protocol = "real_only",
    seeds: Sequence[int] = (0, 1, 2),
    reweight: ReweightMode | None = None,
    size: int = 32,
    epochs: int = 10,
    attribute: str | None = None,
    select: Select = "val",
    split_seed: int = 0,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    allow_few_seeds: bool = False,
    extra_tests: Mapping[str, tuple[np.ndarray, Sequence[str]]] | None = None,
    real_images: np.ndarray | None = None,
    synthetic_images: np.ndarray | None = None,
) -> dict[str, Any]:
    """Train downstream classifiers under one protocol and predict the real test split, once per seed.

    The real dataset is split once with :func:`~fairsample.data.splits.split_indices` (``split_seed``, ``fractions``)
    and the same split serves every protocol and seed. Training sets: ``real_only`` = real train;
    ``real_plus_synthetic`` = real train + every synthetic image; ``synthetic_only`` = every synthetic image.
    Validation (epoch selection, reweighting) is always the real val split and testing the real test split. The
    ``synthetic`` dataset is ignored by ``real_only``, so one call signature serves all three protocols.

    Args:
        real: the real dataset.
        synthetic: a generated dataset with the same label and attribute columns (needed by the other protocols).
        protocol: ``"real_only"``, ``"real_plus_synthetic"`` or ``"synthetic_only"``.
        seeds: training seeds (distinct ints >= 0); at least 3 unless ``allow_few_seeds``.
        reweight: ``None`` or a :class:`Reweighter` mode, balancing the groups of ``attribute``.
        size: image side in pixels (images are resized bicubically).
        epochs: training epochs per seed.
        attribute: the sensitive column reported and reweighted (default: the real spec's first group).
        select: checkpoint rule, see :func:`select_epoch`.
        split_seed, fractions: the real split (train, val, test).
        batch_size, learning_rate: optimisation settings.
        allow_few_seeds: accept fewer than 3 seeds (the summary's ``sd`` is ``None`` for one seed).
        extra_tests: more test sets every classifier also predicts after training, ``{name: (images, labels)}``
            with ``(M, H, W, 3)`` uint8 images at ``size`` (e.g. a counterfactual set); never used for selection.
        real_images, synthetic_images: every row of ``real`` / ``synthetic`` already loaded at ``size``,
            ``(N, size, size, 3)`` uint8 in row order (callers running several protocols load them once); None: read
            from the folders.

    Returns:
        A JSON-safe dict: ``protocol``, ``attribute``, ``label``, ``classes``, ``groups``, ``config`` (every option),
        ``split_sizes``, ``n_train_real``, ``n_train_synthetic``, ``n_train``, ``n_by_group`` (per split);
        ``runs``: one dict per seed with ``seed``, ``selected_epoch``, ``y_true``, ``y_pred`` (class names),
        ``y_prob`` (``(n_test, K)`` lists, column k ↔ ``classes[k]``), ``sensitive_features``, ``test_accuracy``,
        ``test_accuracy_by_group``, ``history`` and ``extra`` (``{name: {"y_true", "y_pred", "y_prob",
        "accuracy"}}`` for ``extra_tests``, same conventions); ``summary``: ``{"accuracy": {mean, sd, values},
        "accuracy_by_group": {group: {mean, sd, values}}, "n_seeds"}`` (fractions; sd with ddof=1).

    Raises:
        ConfigError: bad protocol, seeds, select or reweight; ``synthetic`` missing when needed; no attribute.
        DataError: a missing label/attribute column, synthetic values absent from the real data, an empty val or
            test split, or (with ``reweight``) a training group absent from validation.

    Example:
        >>> import tempfile, pathlib, pandas as pd
        >>> from PIL import Image
        >>> from fairsample.data import DatasetSpec
        >>> root = pathlib.Path(tempfile.mkdtemp()); rows = []
        >>> for k in range(40):
        ...     label, tone = str(k % 2), ("light", "dark")[k // 2 % 2]
        ...     Image.new("RGB", (8, 8), (255 * (k % 2), 60 + 120 * (tone == "light"), 0)).save(root / f"{k}.png")
        ...     rows.append({"file_name": f"{k}.png", "label": label, "tone": tone})
        >>> real = FolderDataset(root, DatasetSpec(groups=("tone",)), pd.DataFrame(rows))
        >>> out = run_protocol(real, size=8, epochs=2, seeds=(0, 1, 2), batch_size=16)
        >>> out["split_sizes"], len(out["runs"]), sorted(out["summary"]["accuracy_by_group"])
        ({'train': 32, 'val': 4, 'test': 4}, 3, ['dark', 'light'])
    """
    # 1. validate options and data
    if protocol not in PROTOCOLS:
        raise ConfigError(_BAD_PROTOCOL.format(allowed=list(PROTOCOLS), value=protocol))
    if reweight is not None and reweight not in REWEIGHT_MODES:
        raise ConfigError(_BAD_REWEIGHT.format(allowed=list(REWEIGHT_MODES), value=reweight))
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(_BAD_EPOCHS.format(value=epochs))
    _check_select(select, epochs)
    seed_list = check_seeds(seeds, allow_few_seeds)
    if attribute is None:
        if not real.spec.groups:
            raise ConfigError(_NO_ATTRIBUTE)
        attribute = real.spec.groups[0]
    label = real.spec.label
    _check_columns(real, "real", label, attribute)
    use_synthetic = protocol != "real_only"
    if use_synthetic:
        if synthetic is None:
            raise ConfigError(_NEED_SYNTHETIC.format(protocol=protocol))
        _check_columns(synthetic, "synthetic", synthetic.spec.label, attribute)
        _check_values(real, synthetic, attribute)
    for name, which, ds, images in (
        ("real_images", "real", real, real_images),
        ("synthetic_images", "synthetic", synthetic, synthetic_images),
    ):
        if images is not None and (ds is None or tuple(images.shape) != (len(ds), size, size, 3)):
            n = 0 if ds is None else len(ds)
            raise ConfigError(
                _PRELOADED.format(name=name, m=len(images), shape=tuple(images.shape[1:]), which=which, n=n, size=size)
            )

    def real_pixels(rows: np.ndarray) -> np.ndarray:
        return real_images[rows] if real_images is not None else _pixels(real, rows, size)

    # 2. one fixed real split; test rows are only loaded for prediction after training
    parts = split_indices(real, fractions=fractions, seed=split_seed)
    for split in ("val", "test"):
        if len(parts[split]) == 0:
            raise DataError(_EMPTY_SPLIT.format(split=f"real {split}", fix="use more images or larger `fractions`."))
    r_labels = real.frame[label].astype(str).to_numpy(dtype=object)
    r_groups = real.frame[attribute].astype(str).to_numpy(dtype=object)
    train_x, train_y, train_g = [], [], []
    n_real = n_syn = 0
    if protocol in ("real_only", "real_plus_synthetic"):
        rows = parts["train"]
        train_x.append(real_pixels(rows))
        train_y += list(r_labels[rows])
        train_g += list(r_groups[rows])
        n_real = len(rows)
    if use_synthetic:
        assert synthetic is not None
        rows = np.arange(len(synthetic))
        train_x.append(synthetic_images if synthetic_images is not None else _pixels(synthetic, rows, size))
        train_y += synthetic.frame[synthetic.spec.label].astype(str).tolist()
        train_g += synthetic.frame[attribute].astype(str).tolist()
        n_syn = len(rows)
    if not train_y:
        raise DataError(_EMPTY_SPLIT.format(split="training", fix="add images to the real train split or synthetic."))
    x_train = np.concatenate(train_x)
    val_rows, test_rows = parts["val"], parts["test"]
    x_val = real_pixels(val_rows)
    y_val, g_val = list(r_labels[val_rows]), list(r_groups[val_rows])
    classes = sorted(set(r_labels.tolist()), key=natural_key)
    groups = sorted(set(r_groups.tolist()), key=natural_key)
    # 3. train one classifier per seed on train, selected on val
    results = [
        train_downstream(
            x_train,
            train_y,
            train_g,
            x_val,
            y_val,
            g_val,
            reweight=reweight,
            epochs=epochs,
            seed=s,
            select=select,
            classes=classes,
            batch_size=batch_size,
            learning_rate=learning_rate,
        )
        for s in seed_list
    ]
    # 4. predict the real test split
    x_test = real_pixels(test_rows)
    y_test, g_test = [str(v) for v in r_labels[test_rows]], [str(v) for v in r_groups[test_rows]]
    runs = []
    for s, res in zip(seed_list, results, strict=True):
        prob = res.classifier.predict_proba(x_test)
        pred = [classes[k] for k in prob.argmax(1)]
        extra = {}
        for name, (x_extra, y_extra) in (extra_tests or {}).items():
            p_extra = res.classifier.predict_proba(np.ascontiguousarray(x_extra))
            y_pred_extra = [classes[k] for k in p_extra.argmax(1)]
            y_true_extra = [str(v) for v in y_extra]
            extra[name] = {
                "y_true": y_true_extra,
                "y_pred": y_pred_extra,
                "y_prob": p_extra.astype(np.float64).tolist(),
                "accuracy": float(np.mean(np.asarray(y_pred_extra) == np.asarray(y_true_extra))),
            }
        runs.append(
            {
                "seed": s,
                "selected_epoch": res.selected_epoch,
                "y_true": y_test,
                "y_pred": pred,
                "y_prob": prob.astype(np.float64).tolist(),
                "sensitive_features": g_test,
                "test_accuracy": float(np.mean(np.asarray(pred) == np.asarray(y_test))),
                "test_accuracy_by_group": _accuracy_by_group(y_test, pred, g_test),
                "history": [r.to_dict() for r in res.history],
                "extra": extra,
            }
        )
    test_groups = sorted(set(g_test), key=natural_key)
    n_by_group = {name: _counts(values) for name, values in (("train", train_g), ("val", g_val), ("test", g_test))}
    return {
        "protocol": protocol,
        "attribute": attribute,
        "label": label,
        "classes": classes,
        "groups": groups,
        "config": {
            "seeds": seed_list,
            "reweight": reweight,
            "size": size,
            "epochs": epochs,
            "select": select if isinstance(select, str) else int(select),
            "split_seed": split_seed,
            "fractions": [float(f) for f in fractions],
            "batch_size": batch_size,
            "learning_rate": learning_rate,
        },
        "split_sizes": {k: len(parts[k]) for k in ("train", "val", "test")},
        "n_train_real": n_real,
        "n_train_synthetic": n_syn,
        "n_train": len(train_y),
        "n_by_group": n_by_group,
        "runs": runs,
        "summary": {
            "n_seeds": len(seed_list),
            "accuracy": _mean_sd([r["test_accuracy"] for r in runs]),
            "accuracy_by_group": {g: _mean_sd([r["test_accuracy_by_group"][g] for r in runs]) for g in test_groups},
        },
    }


# ------------------------------------------------------------------------------------------------------------ BER


@dataclass
class BERResult:
    """Balanced error rate of a fresh attribute classifier on a held-out part (METHODS.md §5.11)."""

    ber: float  # 1 − balanced accuracy; 0 = attribute fully recoverable, (K−1)/K = unpredictable
    balanced_accuracy: float  # sklearn balanced_accuracy_score on the held-out part
    classes: list[str]  # attribute values, natural order
    n_train: int  # images the classifier was trained on
    n_test: int  # held-out images scored
    classifier: TrainedClassifier  # the attribute classifier

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (no weights)."""
        return {
            "ber": self.ber,
            "balanced_accuracy": self.balanced_accuracy,
            "classes": list(self.classes),
            "n_train": self.n_train,
            "n_test": self.n_test,
        }


def attribute_classifier_ber(
    images: np.ndarray | Tensor,
    s_labels: Sequence[str],
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    epochs: int = 8,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
) -> BERResult:
    """BER = 1 − balanced accuracy of a fresh attribute classifier, trained on 80 % and scored on the held-out 20 %.

    The split is stratified by attribute value (scikit-learn ``train_test_split``, ``random_state=seed``). BER is a
    lower bound over the classifiers tried: a weak classifier inflates apparent fairness (METHODS.md §5.11).

    Args:
        images: ``(N, H, W, 3)`` uint8 or ``(N, 3, H, W)`` float in [0, 1].
        s_labels: ``N`` attribute values (e.g. the *requested* initial attribute of generated images).
        seed: split and training seed.
        test_fraction: held-out share in (0, 1).
        epochs, batch_size, learning_rate: classifier settings.

    Returns:
        :class:`BERResult`; ``ber`` in [0, (K−1)/K].

    Raises:
        ConfigError: bad ``test_fraction`` or images.
        DataError: length mismatch, a single attribute value, a value with fewer than 2 images, or too few images
            to hold every value on both sides of the split.

    Example:
        >>> x = np.zeros((20, 8, 8, 3), np.uint8); x[10:] = 255
        >>> res = attribute_classifier_ber(x, ["F"] * 10 + ["M"] * 10, epochs=20, batch_size=16)
        >>> res.ber, res.n_test
        (0.0, 4)
    """
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, int | float) or not 0 < test_fraction < 1:
        raise ConfigError(_BAD_FRACTION.format(value=test_fraction))
    s = np.asarray([str(v) for v in s_labels], dtype=object)
    if len(images) != len(s):
        raise DataError(_BER_LENGTHS.format(n=len(images), m=len(s)))
    values, counts = np.unique(s.astype(str), return_counts=True)
    classes = sorted(values.tolist(), key=natural_key)
    if len(classes) < 2:
        raise DataError(_BER_ONE_CLASS.format(value=classes[0] if classes else None))
    small = sorted((str(v) for v, n in zip(values, counts, strict=True) if n < 2), key=natural_key)
    if small:
        raise DataError(_BER_SMALL_CLASS.format(values=small))
    # 1. stratified split
    try:
        train_rows, test_rows = train_test_split(
            np.arange(len(s)), test_size=test_fraction, stratify=s.astype(str), random_state=seed
        )
    except ValueError as exc:
        raise DataError(_BER_SPLIT.format(n=len(s), fraction=test_fraction, detail=exc)) from exc
    train_rows, test_rows = np.sort(train_rows), np.sort(test_rows)
    x = images[torch.as_tensor(train_rows)] if isinstance(images, Tensor) else images[train_rows]
    x_test = images[torch.as_tensor(test_rows)] if isinstance(images, Tensor) else images[test_rows]
    # 2. fresh classifier on the train part
    clf = fit_classifier(
        x,
        list(s[train_rows]),
        classes=classes,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
    )
    # 3. BER on the held-out part (the one BER implementation, fairness_ber.ber = 1 - balanced accuracy)
    from fairsample.evaluation.fairness_ber import ber

    error = ber(list(s[test_rows]), list(clf.predict(x_test)))
    return BERResult(error, 1.0 - error, classes, len(train_rows), len(test_rows), clf)
