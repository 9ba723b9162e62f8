"""Balanced error rate of a fresh attribute classifier (METHODS.md §5.11): how well a generated or real set's
attribute can be recovered from its images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import Tensor

from fairsample.core.errors import ConfigError, DataError
from fairsample.data.tables import natural_key
from fairsample.evaluation.classifiers import TrainedClassifier, fit_classifier

__all__ = ["BERResult", "attribute_classifier_ber"]

_BAD_FRACTION = "`test_fraction` must be a number in (0, 1), got {value!r}."
_BER_LENGTHS = "`images` has {n} rows but `s_labels` has {m}; give one attribute value per image."
_BER_ONE_CLASS = "`s_labels` has a single value ({value!r}); BER needs at least two attribute values."
_BER_SMALL_CLASS = (
    "attribute value(s) {values} have fewer than 2 images; each value needs one in the train and one in the test part."
)
_BER_SPLIT = "cannot split {n} images into train/test with test_fraction={fraction} ({detail}); use more images."


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
