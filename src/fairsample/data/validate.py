"""Validation of a metadata frame against its resolved spec, and the soft warnings of a dataset folder.

Columns and paths (blank, absolute or escaping ``file_name``, missing files), unknown group values (fail or drop),
value maps, blank labels, repeated files and split names. A hard failure raises
:class:`~fairsample.core.errors.DataError`
with one line naming the file, column, first row (1-based, from the frame index) and the fix (STYLE.md §6.1, §8);
soft findings are returned as text for :func:`~fairsample.data.folder.load_folder` to warn about.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from fairsample.core.errors import DataError
from fairsample.data.schema import DatasetSpec
from fairsample.data.splits import SPLIT_ALIASES, normalize_split_values
from fairsample.data.tables import natural_key

_MISSING_FILE_COL = (
    "{file} has no {column!r} column (columns present: {present}); add it with each image's path relative to the "
    "dataset root, or set `file_col` in fairsample.toml."
)
_MISSING_COLUMN = "{file} has no {role} column {column!r} (columns present: {present}); {fix}."
_NO_GROUPS = (
    "no sensitive-attribute column given for {root}; pass --group-col COLUMN (candidates in {file}: {candidates}) "
    "or set `groups` in fairsample.toml."
)
_BLANK_FILE = "{rows} in {file} {have} a blank {column} (first: row {row}); give every row its image path."
_UNSAFE_PATH = (
    "{rows} in {file} {have} a {column} that is absolute or contains '..' (first: row {row}, {value!r}); "
    "paths must be relative to {root} and stay inside it."
)
_DUPLICATE_FILE = (
    "{rows} in {file} repeat a {column} listed earlier (first: row {row}, {value!r}); keep one row per image."
)
_MISSING_FILES = "{rows} in {file} {have} no matching file (first: {value}); fix {column} or remove the rows."
_BLANK_LABEL = (
    "{rows} in {file} {have} a blank {column} label (first: row {row}); fill in the labels or remove the rows."
)
_UNKNOWN_VALUE = (
    "{rows} in {file} {have} an unknown {column} value (first: row {row}, {value!r}); "
    "fix the values, or pass --drop-unknown to drop those rows."
)
_NOT_IN_VALUES = (
    "{rows} in {file} {have} a {column} value outside its value map (first: row {row}, {value!r}); allowed values are "
    "{allowed}; fix the rows or extend [values.{column}] in fairsample.toml."
)
_BAD_SPLIT = (
    "{rows} in {file} {have} a {column} value that is not a split name (first: row {row}, {value!r}); "
    "use one of {allowed} (case-insensitive)."
)

# Warnings (returned as text; load_folder emits them as FairsampleWarning and keeps them in FolderDataset.warnings).
_DROPPED_UNKNOWN = "dropped {rows} with an unknown {columns} value (drop_unknown is set); {remaining} rows remain"
_SMALL_GROUP = "group {group} has {count} images (< min_group_size={min_size})"
_SINGLE_LABEL = "group {group} has only label {label}: AUC is undefined and will be reported as NaN"


def _rows(n: int) -> dict[str, str]:
    """Template arguments '1 row' / 'has' or 'n rows' / 'have'."""
    return {"rows": f"{n} row{'s' if n != 1 else ''}", "have": "has" if n == 1 else "have"}


def _first(mask: np.ndarray | pd.Series, frame: pd.DataFrame, column: str) -> tuple[int, int, str]:
    """(count, 1-based source row, value) of the first flagged row."""
    mask = np.asarray(mask, dtype=bool)
    pos = int(np.flatnonzero(mask)[0])
    return int(mask.sum()), int(frame.index[pos]) + 1, str(frame[column].iloc[pos])


_UNSAFE_RE = r"^(?:[/\\]|[A-Za-z]:)|(?:^|[/\\])\.\.(?:[/\\]|$)"


def _unsafe_paths(paths: pd.Series) -> np.ndarray:
    """Absolute (POSIX, UNC or drive letter) or with a '..' component, which could leave the root."""
    return paths.str.contains(_UNSAFE_RE, regex=True).to_numpy(dtype=bool)


def _check_columns(frame: pd.DataFrame, spec: DatasetSpec, file: str, root: Path) -> None:
    """Every column the spec names exists; at least one group."""
    present = list(frame.columns)
    if spec.file_col not in frame.columns:
        raise DataError(_MISSING_FILE_COL.format(file=file, column=spec.file_col, present=present))
    if not spec.groups:
        named = {spec.file_col, spec.label, spec.patient_col, spec.split}
        candidates = [c for c in present if c not in named]
        raise DataError(_NO_GROUPS.format(root=root, file=file, candidates=candidates))
    roles = [("label", spec.label, "pass --label-col COLUMN or set `label` in fairsample.toml")]
    roles += [("group", g, "pass --group-col COLUMN or fix `groups` in fairsample.toml") for g in spec.groups]
    if spec.patient_col is not None:
        fix = "pass --patient-col COLUMN or fix `patient_col` in fairsample.toml"
        roles.append(("patient id", spec.patient_col, fix))
    if spec.split is not None:
        roles.append(("split", spec.split, "fix or remove `split` in fairsample.toml"))
    for role, column, fix in roles:
        if column not in frame.columns:
            raise DataError(_MISSING_COLUMN.format(file=file, role=role, column=column, present=present, fix=fix))


def _check_paths(frame: pd.DataFrame, spec: DatasetSpec, file: str, root: Path, check_files: bool) -> None:
    """No blank, absolute or escaping file paths; optionally every file exists."""
    col = spec.file_col
    names = frame[col]
    blank = (names == "").to_numpy()
    if blank.any():
        n, row, _ = _first(blank, frame, col)
        raise DataError(_BLANK_FILE.format(**_rows(n), file=file, column=col, row=row))
    unsafe = _unsafe_paths(names)
    if unsafe.any():
        n, row, value = _first(unsafe, frame, col)
        raise DataError(_UNSAFE_PATH.format(**_rows(n), file=file, column=col, row=row, value=value, root=root))
    if check_files:
        base = str(root)
        missing = np.fromiter((not os.path.isfile(os.path.join(base, p)) for p in names), dtype=bool, count=len(names))
        if missing.any():
            n, _, value = _first(missing, frame, col)
            raise DataError(_MISSING_FILES.format(**_rows(n), file=file, value=value, column=col))


def _apply_unknown(frame: pd.DataFrame, spec: DatasetSpec, file: str, validate: bool) -> tuple[pd.DataFrame, list]:
    """Drop rows with unknown group values (drop_unknown) or fail on them (validate)."""
    unknown = {u.casefold() for u in spec.unknown}
    masks = {g: frame[g].str.casefold().isin(unknown).to_numpy() for g in spec.groups}
    bad = np.zeros(len(frame), dtype=bool)
    for m in masks.values():
        bad |= m
    if not bad.any():
        return frame, []
    if spec.drop_unknown:
        kept = frame[~bad]
        columns = "/".join(g for g, m in masks.items() if m.any())
        msg = _DROPPED_UNKNOWN.format(rows=_rows(int(bad.sum()))["rows"], columns=columns, remaining=len(kept))
        return kept, [msg]
    if validate:
        for g, m in masks.items():
            if m.any():
                n, row, value = _first(m, frame, g)
                raise DataError(_UNKNOWN_VALUE.format(**_rows(n), file=file, column=g, row=row, value=value))
    return frame, []


def _apply_values(frame: pd.DataFrame, spec: DatasetSpec, file: str, validate: bool) -> pd.DataFrame:
    """Map label/group columns through spec.values; values already equal to a mapped name pass through."""
    for col in (*spec.groups, spec.label):
        mapping = spec.values.get(col)
        if not mapping:
            continue
        allowed = set(mapping) | set(mapping.values())
        outside = ~frame[col].isin(allowed).to_numpy()
        if col == spec.label:
            outside &= (frame[col] != "").to_numpy()
        if validate and outside.any():
            n, row, value = _first(outside, frame, col)
            allowed_list = sorted(allowed, key=natural_key)
            raise DataError(
                _NOT_IN_VALUES.format(**_rows(n), file=file, column=col, row=row, value=value, allowed=allowed_list)
            )
        frame[col] = frame[col].map(lambda v, m=mapping: m.get(v, v))
    return frame


def _check_rows(frame: pd.DataFrame, spec: DatasetSpec, file: str) -> None:
    """Blank labels, repeated files and unrecognised split values."""
    blank = (frame[spec.label] == "").to_numpy()
    if blank.any():
        n, row, _ = _first(blank, frame, spec.label)
        raise DataError(_BLANK_LABEL.format(**_rows(n), file=file, column=spec.label, row=row))
    repeated = frame[spec.file_col].duplicated().to_numpy()
    if repeated.any():
        n, row, value = _first(repeated, frame, spec.file_col)
        raise DataError(_DUPLICATE_FILE.format(**_rows(n), file=file, column=spec.file_col, row=row, value=value))
    if spec.split is not None:
        _, bad = normalize_split_values(frame[spec.split])
        if bad.any():
            n, row, value = _first(bad, frame, spec.split)
            allowed = sorted(SPLIT_ALIASES)
            raise DataError(
                _BAD_SPLIT.format(**_rows(n), file=file, column=spec.split, row=row, value=value, allowed=allowed)
            )


def _soft_warnings(frame: pd.DataFrame, spec: DatasetSpec) -> list[str]:
    """Small groups and single-label groups, per attribute value."""
    out = []
    for g in spec.groups:
        for value, part in sorted(frame.groupby(g, sort=False), key=lambda kv: natural_key(kv[0])):
            group = f"{g}={value}"
            if len(part) < spec.min_group_size:
                out.append(_SMALL_GROUP.format(group=group, count=len(part), min_size=spec.min_group_size))
            labels = part[spec.label].unique()
            if len(labels) == 1:
                out.append(_SINGLE_LABEL.format(group=group, label=labels[0]))
    return out
