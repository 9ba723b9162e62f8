"""Training one downstream classifier: a :class:`~fairsample.evaluation.classifiers.SmallCNN` whose checkpoint is the
best-*validation* epoch or a pre-registered one (METHODS.md §5.6), optionally with :class:`Reweighter` sampling; it
never sees test data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from fairsample.core.errors import ConfigError, DataError
from fairsample.data.tables import natural_key
from fairsample.evaluation.classifiers import TrainedClassifier, fit_classifier
from fairsample.evaluation.downstream_weights import REWEIGHT_MODES, Reweighter, ReweightMode

__all__ = ["DownstreamResult", "EpochRecord", "select_epoch", "train_downstream"]

Select = Literal["val", "last"] | int

_BAD_REWEIGHT = "`reweight` must be None or one of {allowed}, got {value!r}."
_BAD_SELECT = "`select` must be 'val', 'last' or an epoch index in [0, {last}], got {value!r}."
_BAD_EPOCHS = "`epochs` must be an integer >= 1, got {value!r}."
_EMPTY_HISTORY = "`val_accuracy` is empty; train at least one epoch before selecting."
_LENGTHS = "{split} inputs disagree in length: {images} images, {labels} labels, {groups} group values."
_EMPTY_SPLIT = "the {split} set is empty; {fix}"
_VAL_MISSING_GROUP = (
    "reweighting needs the validation accuracy of every training group, but group(s) {missing} have no validation "
    "images; add some or train with reweight=None."
)


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
