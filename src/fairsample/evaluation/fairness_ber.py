"""Balanced error rate of an attribute classifier (Feldman et al. ε-fairness; METHODS.md §5.11): ``ber``."""

from __future__ import annotations

import warnings

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import balanced_accuracy_score

from fairsample.core.errors import ConfigError, FairsampleWarning
from fairsample.evaluation.fairness import _EMPTY, _column, _encode, _label_kind

_BER_LEN = "`s_pred` has {m} rows but `s_true` has {n}; pass one prediction per sample."
_BER_ONE_CLASS = "`s_true` has a single attribute value ({value!r}); BER needs at least 2 - evaluate on a mixed set."
_BER_KINDS = "`s_true` holds {a} but `s_pred` holds {b}; pass attribute values of one type."
_BER_EXTRA = (
    "ber: `s_pred` contains value(s) {values} absent from `s_true`; they count as errors and recall is averaged over "
    "the {k} values present in `s_true`."
)


def ber(s_true: ArrayLike, s_pred: ArrayLike) -> float:
    """Balanced error rate BER = 1 − balanced accuracy (scikit-learn ``balanced_accuracy_score``).

    Binary: ½[P(h=1 | S=0) + P(h=0 | S=1)]; 0.5 means the attribute is unpredictable (ε-fair), 0 fully recoverable.
    Multiclass: 1 − (1/K) Σ_s recall_s, maximum (K−1)/K for a constant classifier. BER is a lower bound only over the
    classifiers tried: use a strong one and held-out data.

    Args:
        s_true: ``(N,)`` true attribute values (str or int), ≥ 2 distinct.
        s_pred: ``(N,)`` attribute values predicted by a classifier.

    Returns:
        BER in [0, (K−1)/K].

    Raises:
        ConfigError: mismatched lengths, empty input, a single attribute value, mixed value types.

    Example:
        >>> ber([0, 0, 1, 1], [0, 1, 1, 1])
        0.25
    """
    st = _column("s_true", s_true)
    if len(st) == 0:
        raise ConfigError(_EMPTY.replace("y_true", "s_true"))
    sp = _column("s_pred", s_pred)
    if len(sp) != len(st):
        raise ConfigError(_BER_LEN.format(m=len(sp), n=len(st)))
    kt, kp = _label_kind(st), _label_kind(sp)
    if kt != kp:
        raise ConfigError(_BER_KINDS.format(a=kt, b=kp))
    values, _ = _encode("s_true", st)
    if len(values) < 2:
        raise ConfigError(_BER_ONE_CLASS.format(value=values[0]))
    extra, _ = _encode("s_pred", np.setdiff1d(sp.astype(object), st.astype(object)))
    if extra:
        warnings.warn(_BER_EXTRA.format(values=extra, k=len(values)), FairsampleWarning, stacklevel=2)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        return float(1.0 - balanced_accuracy_score(st, sp))
