"""Downstream protocols: classifiers trained on real and/or synthetic images, tested on real images (METHODS.md §3.7).

- :func:`run_protocol`: ``real_only`` / ``real_plus_synthetic`` / ``synthetic_only`` over several seeds on one fixed
  real split; returns JSON-safe test predictions for the fairness metrics (``fairsample.evaluation.fairness``) plus a
  mean ± sd accuracy summary.

Re-exported from their modules, so every name stays importable from here:

- :class:`Reweighter` (:mod:`fairsample.evaluation.downstream_weights`): dynamic inverse-validation-accuracy sampling
  weights (FairSkin's dynamic reweighting as coded by FairGen's ``classify_reweight_*.py``), with the project's
  ``per_group_share`` mode, EMA smoothing and a ratio cap.
- :func:`train_downstream` (:mod:`fairsample.evaluation.downstream_train`): one
  :class:`~fairsample.evaluation.classifiers.SmallCNN` whose checkpoint is the best-*validation* epoch or a
  pre-registered one (METHODS.md §5.6); it never sees test data.
- :func:`attribute_classifier_ber` (:mod:`fairsample.evaluation.attribute_ber`): balanced error rate of a fresh
  attribute classifier (METHODS.md §5.11).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from fairsample.core.errors import ConfigError, DataError
from fairsample.data.folder import FolderDataset
from fairsample.data.splits import split_indices
from fairsample.data.tables import natural_key
from fairsample.evaluation.aggregate import _BAD_SEEDS, _FEW_SEEDS, MIN_SEEDS, _mean_sd, check_seeds  # noqa: F401
from fairsample.evaluation.attribute_ber import BERResult, attribute_classifier_ber
from fairsample.evaluation.classifiers import TrainedClassifier
from fairsample.evaluation.downstream_train import (
    _BAD_EPOCHS,
    _BAD_REWEIGHT,
    _EMPTY_SPLIT,
    DownstreamResult,
    EpochRecord,
    Select,
    _accuracy_by_group,
    _check_select,
    select_epoch,
    train_downstream,
)
from fairsample.evaluation.downstream_weights import (
    REWEIGHT_MODES,
    Reweighter,
    ReweightMode,
    inverse_accuracy_coefficients,
)

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


Protocol = Literal["real_only", "real_plus_synthetic", "synthetic_only"]

PROTOCOLS: tuple[str, str, str] = ("real_only", "real_plus_synthetic", "synthetic_only")

_BAD_PROTOCOL = "`protocol` must be one of {allowed}, got {value!r}."
_NEED_SYNTHETIC = "protocol={protocol!r} needs a synthetic dataset; pass `synthetic=` or use protocol='real_only'."
_NO_ATTRIBUTE = "`attribute` is required: the real dataset's spec names no group columns."
_MISSING_COLUMN = "the {which} dataset has no {what} column {column!r} (columns: {present}); fix the spec or metadata."
_UNSEEN_VALUES = (
    "synthetic {what} value(s) {values} are not in the real data (real values: {real}); drop or relabel those rows."
)
_PRELOADED = (
    "`{name}` has {m} images of shape {shape} but the {which} dataset has {n} rows at size {size}; pass every row, "
    "(N, size, size, 3) uint8 in row order, or None."
)


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


@dataclass(frozen=True)
class _ProtocolData:
    """What one protocol trains, selects and tests on, from one fixed real split (test images: loaded later)."""

    parts: dict[str, np.ndarray]  # real split row indices: "train", "val", "test"
    x_train: np.ndarray  # (N, size, size, 3) uint8: real train rows first, then every synthetic image
    y_train: list[str]  # N class names
    g_train: list[str]  # N attribute values
    n_real: int  # real training images
    n_synthetic: int  # synthetic training images
    x_val: np.ndarray  # (M, size, size, 3) uint8 real validation images
    y_val: list[str]  # M class names
    g_val: list[str]  # M attribute values
    y_test: list[str]  # real test split class names
    g_test: list[str]  # real test split attribute values
    classes: list[str]  # every real class, natural order
    groups: list[str]  # every real attribute value, natural order


def _real_pixels(real: FolderDataset, real_images: np.ndarray | None, rows: np.ndarray, size: int) -> np.ndarray:
    """``(n, size, size, 3) uint8`` real images of ``rows``, from ``real_images`` when preloaded."""
    return real_images[rows] if real_images is not None else _pixels(real, rows, size)


def _check_protocol_inputs(
    real: FolderDataset,
    synthetic: FolderDataset | None,
    protocol: str,
    seeds: Sequence[int],
    reweight: str | None,
    size: int,
    epochs: int,
    attribute: str | None,
    select: Select,
    allow_few_seeds: bool,
    real_images: np.ndarray | None,
    synthetic_images: np.ndarray | None,
) -> tuple[list[int], str]:
    """Every option and input of :func:`run_protocol` checked; returns the seeds and the reported attribute."""
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
    _check_columns(real, "real", real.spec.label, attribute)
    if protocol != "real_only":
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
    return seed_list, attribute


def _training_data(
    real: FolderDataset,
    synthetic: FolderDataset | None,
    protocol: str,
    attribute: str,
    size: int,
    split_seed: int,
    fractions: Sequence[float],
    real_images: np.ndarray | None,
    synthetic_images: np.ndarray | None,
) -> _ProtocolData:
    """The real split, the protocol's training set, the real validation set and the real test labels."""
    parts = split_indices(real, fractions=fractions, seed=split_seed)
    for split in ("val", "test"):
        if len(parts[split]) == 0:
            raise DataError(_EMPTY_SPLIT.format(split=f"real {split}", fix="use more images or larger `fractions`."))
    r_labels = real.frame[real.spec.label].astype(str).to_numpy(dtype=object)
    r_groups = real.frame[attribute].astype(str).to_numpy(dtype=object)
    train_x, train_y, train_g = [], [], []
    n_real = n_syn = 0
    if protocol in ("real_only", "real_plus_synthetic"):
        rows = parts["train"]
        train_x.append(_real_pixels(real, real_images, rows, size))
        train_y += list(r_labels[rows])
        train_g += list(r_groups[rows])
        n_real = len(rows)
    if protocol != "real_only":
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
    x_val = _real_pixels(real, real_images, val_rows, size)
    return _ProtocolData(
        parts=parts,
        x_train=x_train,
        y_train=train_y,
        g_train=train_g,
        n_real=n_real,
        n_synthetic=n_syn,
        x_val=x_val,
        y_val=list(r_labels[val_rows]),
        g_val=list(r_groups[val_rows]),
        y_test=[str(v) for v in r_labels[test_rows]],
        g_test=[str(v) for v in r_groups[test_rows]],
        classes=sorted(set(r_labels.tolist()), key=natural_key),
        groups=sorted(set(r_groups.tolist()), key=natural_key),
    )


def _train_seeds(
    data: _ProtocolData,
    seed_list: Sequence[int],
    *,
    reweight: ReweightMode | None,
    epochs: int,
    select: Select,
    batch_size: int,
    learning_rate: float,
) -> list[DownstreamResult]:
    """One :func:`train_downstream` classifier per seed on the training set, selected on the real validation set."""
    return [
        train_downstream(
            data.x_train,
            data.y_train,
            data.g_train,
            data.x_val,
            data.y_val,
            data.g_val,
            reweight=reweight,
            epochs=epochs,
            seed=s,
            select=select,
            classes=data.classes,
            batch_size=batch_size,
            learning_rate=learning_rate,
        )
        for s in seed_list
    ]


def _predict_extra(
    clf: TrainedClassifier, classes: Sequence[str], extra_tests: Mapping[str, tuple[np.ndarray, Sequence[str]]] | None
) -> dict[str, dict[str, Any]]:
    """Predictions and accuracy of one classifier on every extra test set (``(M, H, W, 3)`` uint8 images)."""
    extra = {}
    for name, (x_extra, y_extra) in (extra_tests or {}).items():
        p_extra = clf.predict_proba(np.ascontiguousarray(x_extra))
        y_pred_extra = [classes[k] for k in p_extra.argmax(1)]
        y_true_extra = [str(v) for v in y_extra]
        extra[name] = {
            "y_true": y_true_extra,
            "y_pred": y_pred_extra,
            "y_prob": p_extra.astype(np.float64).tolist(),
            "accuracy": float(np.mean(np.asarray(y_pred_extra) == np.asarray(y_true_extra))),
        }
    return extra


def _predict_runs(
    real: FolderDataset,
    data: _ProtocolData,
    seed_list: Sequence[int],
    results: Sequence[DownstreamResult],
    extra_tests: Mapping[str, tuple[np.ndarray, Sequence[str]]] | None,
    real_images: np.ndarray | None,
    size: int,
) -> list[dict[str, Any]]:
    """One run record per seed: predictions on the real test split (and ``extra_tests``) and the training history."""
    x_test = _real_pixels(real, real_images, data.parts["test"], size)
    y_test, g_test = data.y_test, data.g_test
    runs = []
    for s, res in zip(seed_list, results, strict=True):
        prob = res.classifier.predict_proba(x_test)
        pred = [data.classes[k] for k in prob.argmax(1)]
        extra = _predict_extra(res.classifier, data.classes, extra_tests)
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
    return runs


def _protocol_doc(
    real: FolderDataset,
    protocol: str,
    attribute: str,
    config: dict[str, Any],
    data: _ProtocolData,
    runs: list[dict[str, Any]],
) -> dict[str, Any]:
    """The JSON-safe result of :func:`run_protocol` (its Returns section), with the mean ± sd accuracy summary."""
    test_groups = sorted(set(data.g_test), key=natural_key)
    splits = (("train", data.g_train), ("val", data.g_val), ("test", data.g_test))
    n_by_group = {name: _counts(values) for name, values in splits}
    return {
        "protocol": protocol,
        "attribute": attribute,
        "label": real.spec.label,
        "classes": data.classes,
        "groups": data.groups,
        "config": config,
        "split_sizes": {k: len(data.parts[k]) for k in ("train", "val", "test")},
        "n_train_real": data.n_real,
        "n_train_synthetic": data.n_synthetic,
        "n_train": len(data.y_train),
        "n_by_group": n_by_group,
        "runs": runs,
        "summary": {
            "n_seeds": len(config["seeds"]),
            "accuracy": _mean_sd([r["test_accuracy"] for r in runs]),
            "accuracy_by_group": {g: _mean_sd([r["test_accuracy_by_group"][g] for r in runs]) for g in test_groups},
        },
    }


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
    seed_list, attribute = _check_protocol_inputs(
        real,
        synthetic,
        protocol,
        seeds,
        reweight,
        size,
        epochs,
        attribute,
        select,
        allow_few_seeds,
        real_images,
        synthetic_images,
    )
    # 2. one fixed real split; test rows are only loaded for prediction after training
    data = _training_data(
        real, synthetic, protocol, attribute, size, split_seed, fractions, real_images, synthetic_images
    )
    # 3. train one classifier per seed on train, selected on val
    results = _train_seeds(
        data,
        seed_list,
        reweight=reweight,
        epochs=epochs,
        select=select,
        batch_size=batch_size,
        learning_rate=learning_rate,
    )
    # 4. predict the real test split
    runs = _predict_runs(real, data, seed_list, results, extra_tests, real_images, size)
    # 5. the JSON-safe document: every option, split sizes, runs and the mean ± sd summary
    config = {
        "seeds": seed_list,
        "reweight": reweight,
        "size": size,
        "epochs": epochs,
        "select": select if isinstance(select, str) else int(select),
        "split_seed": split_seed,
        "fractions": [float(f) for f in fractions],
        "batch_size": batch_size,
        "learning_rate": learning_rate,
    }
    return _protocol_doc(real, protocol, attribute, config, data, runs)
