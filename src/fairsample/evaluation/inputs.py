"""Loading and checking the inputs of :func:`~fairsample.evaluation.evaluate.evaluate` (issue #4): the real dataset,
the reported attributes, the synthetic sets and their replicates, the counterfactual and oracle sets, the real split
and the minority value of each attribute.

Every check raises a one-line :class:`~fairsample.core.errors.ConfigError` (a bad option) or
:class:`~fairsample.core.errors.DataError` (unusable data) before anything is trained.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fairsample.core.errors import ConfigError, DataError
from fairsample.evaluation.aggregate import _cell_columns, _counts, _keys, _natural_key, _text_key

if TYPE_CHECKING:
    from fairsample.data.folder import FolderDataset
    from fairsample.evaluation.evaluate import EvaluationSettings, Progress, _Warnings

# ------------------------------------------------------------------------------------------- error templates
_BAD_REAL = "`real` must be a FolderDataset or a dataset folder path, got {kind}."
_BAD_SYNTHETIC = (
    "`synthetic` must be a mapping of set names to FolderDatasets or folder paths, e.g. {{'vanilla': 'out/v'}}, "
    "got {kind}."
)
_NO_SYNTHETIC = "`synthetic` is empty; pass at least one generated set, e.g. {'vanilla': 'out/vanilla'}."
_NO_REPLICATES = (
    "synthetic set {name!r} has an empty list; give a folder or a list of replicate folders, e.g. "
    "{{'vanilla': ['out/v0', 'out/v1']}}."
)
_DUPLICATE_REPLICATE = (
    "synthetic set {name!r} lists {path} twice; each replicate must be a different generated folder."
)
_BAD_MINORITY = (
    "`minority` {value!r} is not a value of {attribute!r} in the real data (values: {values}); pass one of them, or "
    "leave it unset to use the value with the fewest real training images."
)
_BAD_MINORITY_ATTRIBUTE = (
    "`minority` names attribute {attribute!r}, which is not reported (attributes: {attrs}); pass "
    "{{attribute: value}} for one of them."
)
_BAD_MINORITY_KIND = "`minority` must be a value (str), a {{attribute: value}} mapping or None, got {kind}."
_BAD_SET_NAME = (
    "synthetic set name {name!r} is not usable; use 1-40 letters, digits, '.', '_' or '-' "
    "(CLI: --synthetic NAME=PATH)."
)
_BAD_SET_VALUE = "synthetic set {name!r} must be a FolderDataset or a folder path, got {kind}."
_SET_LOAD = "synthetic set {name!r}: {detail}"
_SET_MISSING_COLUMN = (
    "synthetic set {name!r} has no {what} column {column!r} (columns: {present}); add it to {where} with one value "
    "per image (`fairsample generate` writes it)."
)
_NO_CELL_OVERLAP = (
    "synthetic set {name!r} shares no cell with the real data (real cells: {real}; synthetic cells: {synthetic}); "
    "generate images for the real cells (fairsample generate --cells ...) or pass the matching real dataset."
)
_SET_UNSEEN = (
    "synthetic set {name!r}: {column} value(s) {values} do not occur in the real data (real values: {real}); "
    "relabel or drop those rows."
)
_FEW_IN_GROUP = (
    "synthetic set {name!r}: group {group} has {n_real} real and {n_synthetic} synthetic image(s); FID needs at least "
    "2 of each, so generate more images for it (fairsample generate --cells {column}=... --per-cell 2 or more) or "
    "drop its rows."
)
_NO_ATTRIBUTE = (
    "the real dataset names no sensitive attribute; pass `attribute` (a column of {columns}) or add `groups` to its "
    "fairsample.toml."
)
_BAD_ATTRIBUTE = "`attribute` must be a column name or a list of column names, got {value!r}."
_UNKNOWN_ATTRIBUTE = (
    "`attribute` {value!r} is not a column of the real dataset (columns: {columns}); pass one of {groups}."
)
_LABEL_ATTRIBUTE = "`attribute` {value!r} is the label column; pass a sensitive attribute such as {groups}."

_BAD_REFERENCE = "`reference` {value!r} is not a synthetic set name (names: {names}); pass one of them or None."
_FEW_VALUES = (
    "`attribute` {value!r} has {values} in the real {where}; group fairness needs at least 2 values - use more real "
    "images or another attribute."
)
_EMPTY_SPLIT = (
    "the real data's {split} split is empty ({n} images, fractions {fractions}); use more real images or a larger "
    "{split} fraction."
)

_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,40}$")


# ---------------------------------------------------------------------------------------------------- inputs


def _load_real(real: Any) -> FolderDataset:
    """``real`` as a FolderDataset (a dataset is kept, a folder path is loaded)."""
    from fairsample.data.folder import FolderDataset, load_folder

    if isinstance(real, FolderDataset):
        return real
    if isinstance(real, str | os.PathLike):
        return load_folder(real)
    raise ConfigError(_BAD_REAL.format(kind=type(real).__name__))


def _attributes(real: FolderDataset, attribute: Any) -> tuple[str, ...]:
    """The reported attributes: ``attribute`` checked against the real columns, or every group column."""
    columns = list(real.frame.columns)
    if attribute is None:
        if not real.spec.groups:
            raise ConfigError(_NO_ATTRIBUTE.format(columns=columns))
        return tuple(real.spec.groups)
    values = [attribute] if isinstance(attribute, str) else attribute
    if not isinstance(values, Sequence) or not values or not all(isinstance(a, str) and a for a in values):
        raise ConfigError(_BAD_ATTRIBUTE.format(value=attribute))
    if len(set(values)) != len(values):
        raise ConfigError(_BAD_ATTRIBUTE.format(value=attribute))
    hint = list(real.spec.groups) or [c for c in columns if c not in (real.spec.label, real.spec.file_col)]
    for a in values:
        if a == real.spec.label:
            raise ConfigError(_LABEL_ATTRIBUTE.format(value=a, groups=hint))
        if a not in real.frame.columns:
            raise ConfigError(_UNKNOWN_ATTRIBUTE.format(value=a, columns=columns, groups=hint))
    return tuple(values)


def _normalize_synthetic(synthetic: Any) -> dict[str, list[Any]]:
    """``{name: value or [values]}`` → ``{name: [values]}``, names and replicate lists checked."""
    from fairsample.data.folder import FolderDataset

    if not isinstance(synthetic, Mapping):
        raise ConfigError(_BAD_SYNTHETIC.format(kind=type(synthetic).__name__))
    if not synthetic:
        raise ConfigError(_NO_SYNTHETIC)
    out: dict[str, list[Any]] = {}
    for name, value in synthetic.items():
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ConfigError(_BAD_SET_NAME.format(name=name))
        values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
        if not values:
            raise ConfigError(_NO_REPLICATES.format(name=name))
        seen: set[str] = set()
        for v in values:
            if isinstance(v, FolderDataset) or not isinstance(v, str | os.PathLike):
                continue
            key = str(Path(v).expanduser().resolve())
            if key in seen:
                raise ConfigError(_DUPLICATE_REPLICATE.format(name=name, path=v))
            seen.add(key)
        out[name] = values
    return out


def _set_ids(name: str, n: int) -> list[str]:
    """``[name]`` for one replicate, else ``[name#1, ..., name#n]``."""
    return [name] if n == 1 else [f"{name}#{k}" for k in range(1, n + 1)]


def _load_set(name: str, value: Any, real: FolderDataset, attrs: tuple[str, ...]) -> FolderDataset:
    """A synthetic set (``name`` = its set id) as a FolderDataset with the real label column and every attribute
    column (checked first)."""
    from fairsample.data.folder import FolderDataset, find_metadata, load_folder, read_metadata

    needed = [("label", real.spec.label)] + [("attribute", a) for a in attrs]
    needed += [("group", g) for g in real.spec.groups if g not in attrs]
    if isinstance(value, FolderDataset):
        for what, column in needed:
            if column not in value.frame.columns:
                present = list(value.frame.columns)
                where = f"{value.root}/metadata.csv"
                raise DataError(
                    _SET_MISSING_COLUMN.format(name=name, what=what, column=column, present=present, where=where)
                )
        if value.spec.label != real.spec.label:
            value = FolderDataset(value.root, value.spec.replace(label=real.spec.label), value.frame, value.warnings)
        return value
    if not isinstance(value, str | os.PathLike):
        raise ConfigError(_BAD_SET_VALUE.format(name=name, kind=type(value).__name__))
    try:
        meta = find_metadata(value)
        present = list(read_metadata(meta).columns)
    except DataError as exc:
        raise DataError(_SET_LOAD.format(name=name, detail=exc)) from None
    for what, column in needed:
        if column not in present:
            raise DataError(
                _SET_MISSING_COLUMN.format(name=name, what=what, column=column, present=present, where=meta)
            )
    groups = list(real.spec.groups) or list(attrs)
    try:
        return load_folder(value, label_col=real.spec.label, group_cols=groups)
    except DataError as exc:
        raise DataError(_SET_LOAD.format(name=name, detail=exc)) from None


def _check_set(name: str, syn: FolderDataset, real: FolderDataset, attrs: Sequence[str]) -> None:
    """Cells overlap, values known, every shared attribute group has >= 2 real and >= 2 synthetic images."""
    cols = _cell_columns(real, attrs)
    real_cells, syn_cells = set(_keys(real, cols).tolist()), set(_keys(syn, cols).tolist())
    if not real_cells & syn_cells:
        raise DataError(
            _NO_CELL_OVERLAP.format(
                name=name, real=sorted(real_cells, key=_text_key), synthetic=sorted(syn_cells, key=_text_key)
            )
        )
    for column in (real.spec.label, *attrs):
        real_values = set(real.frame[column].astype(str))
        unseen = sorted(set(syn.frame[column].astype(str)) - real_values, key=_natural_key)
        if unseen:
            raise DataError(
                _SET_UNSEEN.format(name=name, column=column, values=unseen, real=sorted(real_values, key=_natural_key))
            )
    for a in attrs:
        n_real, n_syn = _counts(_keys(real, [a])), _counts(_keys(syn, [a]))
        for group in sorted(set(n_real) & set(n_syn), key=_text_key):
            if n_real[group] < 2 or n_syn[group] < 2:
                raise DataError(
                    _FEW_IN_GROUP.format(
                        name=name, group=group, n_real=n_real[group], n_synthetic=n_syn[group], column=a
                    )
                )


def _resolve_minority(
    real: FolderDataset, train_rows: np.ndarray, attrs: Sequence[str], minority: Any
) -> dict[str, dict[str, Any]]:
    """Per attribute: the requested minority value, or the value with the fewest real training images."""
    from fairsample.evaluation.closure import choose_minority

    if minority is None:
        requested: dict[Any, Any] = {}
    elif isinstance(minority, str):
        requested = {attrs[0]: minority}
    elif isinstance(minority, Mapping):
        requested = dict(minority)
    else:
        raise ConfigError(_BAD_MINORITY_KIND.format(kind=type(minority).__name__))
    for a in requested:
        if a not in attrs:
            raise ConfigError(_BAD_MINORITY_ATTRIBUTE.format(attribute=a, attrs=list(attrs)))
    out = {}
    for a in attrs:
        column = real.frame[a].astype(str).to_numpy()
        values = sorted(set(column.tolist()), key=_natural_key)
        train = column[train_rows]
        n_train = {v: int((train == v).sum()) for v in values}
        if a in requested:
            value = str(requested[a])
            if value not in values:
                raise ConfigError(_BAD_MINORITY.format(value=requested[a], attribute=a, values=values))
            rule = "given"
        else:
            value, rule = choose_minority(n_train), "fewest real training images"
        out[a] = {"value": value, "group": f"{a}={value}", "rule": rule, "n_train": n_train}
    return out


@dataclass(frozen=True)
class Inputs:
    """Every dataset :func:`evaluate` reads, loaded and checked."""

    real: FolderDataset  # the real dataset
    attrs: tuple[str, ...]  # sensitive attributes reported
    sets: dict[str, FolderDataset]  # set id -> synthetic set (every replicate of every name)
    replicates: dict[str, list[str]]  # synthetic name -> its set ids
    counterfactual: FolderDataset | None  # test-only counterfactual set, or None
    cf_attrs: tuple[str, ...]  # attributes the counterfactual set is reported by
    oracle: FolderDataset | None  # real held-out images of the oracle row, or None


def _load_inputs(
    real: Any,
    synthetic: Any,
    attribute: Any,
    counterfactual: Any,
    oracle: Any,
    reference: str | None,
    log: _Warnings,
    say: Progress,
) -> Inputs:
    """The real data, attributes, synthetic replicates and held-out sets, loaded and checked (and ``reference``)."""
    from fairsample.evaluation.heldout import load_heldout

    named = _normalize_synthetic(synthetic)
    if reference is not None and reference not in named:
        raise ConfigError(_BAD_REFERENCE.format(value=reference, names=list(named)))
    say("loading and checking the data")
    with log.stage("real data"):
        real_ds = _load_real(real)
    attrs = _attributes(real_ds, attribute)
    sets: dict[str, FolderDataset] = {}
    replicates: dict[str, list[str]] = {}
    for name, values in named.items():
        replicates[name] = _set_ids(name, len(values))
        for set_id, value in zip(replicates[name], values, strict=True):
            with log.stage(f"synthetic data ({set_id})"):
                sets[set_id] = _load_set(set_id, value, real_ds, attrs)
            _check_set(set_id, sets[set_id], real_ds, attrs)
    cf_ds = oracle_ds = None
    cf_attrs: tuple[str, ...] = ()
    if counterfactual is not None:
        with log.stage("counterfactual data"):
            cf_ds, cf_attrs = load_heldout("counterfactual", counterfactual, real_ds, attrs)
    if oracle is not None:
        with log.stage("oracle data"):
            oracle_ds, _ = load_heldout("oracle", oracle, real_ds, attrs)
    return Inputs(real_ds, attrs, sets, replicates, cf_ds, cf_attrs, oracle_ds)


def _check_splits(inputs: Inputs, cfg: EvaluationSettings) -> dict[str, np.ndarray]:
    """Real split rows (train / val / test → ``(n,)`` int); DataError on an empty split or a one-value attribute."""
    from fairsample.data.splits import split_indices

    real_ds = inputs.real
    for a in inputs.attrs:
        values = sorted(set(real_ds.frame[a].astype(str)), key=_natural_key)
        if len(values) < 2:
            raise DataError(_FEW_VALUES.format(value=a, values=values, where="data"))
    parts = split_indices(real_ds, fractions=cfg.fractions, seed=cfg.seed)
    for split in ("val", "test"):
        if len(parts[split]) == 0:
            raise DataError(_EMPTY_SPLIT.format(split=split, n=len(real_ds), fractions=list(cfg.fractions)))
    for a in inputs.attrs:
        values = sorted(set(real_ds.frame[a].astype(str).to_numpy()[parts["test"]]), key=_natural_key)
        if len(values) < 2:
            raise DataError(_FEW_VALUES.format(value=a, values=values, where="test split"))
    return parts
