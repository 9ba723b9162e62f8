"""Preference pairs for preference tuning: ``preferences.csv`` (METHODS.md §3.5, STYLE.md §6.1).

One row per pair: ``file_w`` (the preferred image), ``file_l`` (the rejected one) and the pair's cell, given either
as the dataset's cell columns (every sensitive-attribute column and the label column) or, for Stable-Diffusion-style
models, as a ``text`` column holding the cell's prompt. Other columns (``conf_w``, ``annotator``, ...) are kept out of
the way and ignored. Relative image paths are resolved against the CSV's folder. ``.jsonl`` files (one object per
line, the same keys) are read too; FairGen's ``physician_preferences.jsonl`` keys ``image_w`` / ``image_l`` are
accepted as aliases of ``file_w`` / ``file_l``. Only CSV / JSON text is parsed (nothing is unpickled).

Every problem raises one :class:`~fairsample.core.errors.DataError` line naming the file, the row (1-based data row),
the
column and the fix; missing image files are all collected first and reported with the first few.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from fairsample.core.atomic import atomic_path
from fairsample.core.errors import DataError
from fairsample.data.schema import CellKey

__all__ = ["PREFERENCE_COLUMNS", "PreferencePair", "read_preferences", "write_preferences"]

#: the two image columns of ``preferences.csv`` (winner, loser)
PREFERENCE_COLUMNS: tuple[str, str] = ("file_w", "file_l")
_ALIASES = {"image_w": "file_w", "image_l": "file_l"}  # FairGen's physician_preferences.jsonl keys

_NO_FILE = "preference file {file} does not exist; pass the path of a preferences.csv (file_w,file_l + cell columns)."
_BAD_CSV = "{file} is not valid CSV ({detail}); fix that line (quote values that contain commas)."
_BAD_JSONL = "{file} line {line} is not a JSON object ({detail}); write one object per line."
_NOT_UTF8 = "{file} is not UTF-8 text ({detail}); re-save it as UTF-8."
_EMPTY = "{file} has no preference pairs; add one row per pair (file_w,file_l + the cell columns {columns})."
_MISSING_IMAGE_COLUMN = (
    "{file} has no {column!r} column (columns present: {present}); add file_w (preferred image) and file_l "
    "(rejected image), paths relative to the file's folder."
)
_MISSING_CELL_COLUMNS = (
    "{file} lacks cell column(s) {missing} (columns present: {present}); add the columns {columns} giving each "
    "pair's cell{text_hint}."
)
_TEXT_NEEDS_PROMPTS = (
    "{file} gives cells by `text`, which needs a model with prompt templates (Stable-Diffusion-style); for this "
    "model add the cell columns {columns} instead."
)
_BLANK = "row {row} of {file} has a blank {column}; fill it in or remove the row."
_SAME_IMAGE = "row {row} of {file} names the same image as winner and loser ({value!r}); remove the row."
_UNKNOWN_VALUE = (
    "row {row} of {file} has {column}={value!r}, a cell unknown to the model (known {column} values: {known}); "
    "fix the row or remove it."
)
_UNKNOWN_TEXT = (
    "row {row} of {file} has text {value!r}, which is not the prompt of any cell the model knows (e.g. {example!r}); "
    "fix the row or give the cell columns {columns} instead."
)
_MISSING_IMAGES = (
    "{count} image file(s) named in {file} do not exist (first: {first}); fix the paths (relative paths are "
    "resolved against {root}) or remove the rows."
)
_WRITE_MISSING = "cannot write {file}: pair {index} has no value for cell column {column!r}."


class PreferencePair(NamedTuple):
    """One preference pair: the cell and the absolute paths of the preferred and rejected images."""

    cell: CellKey
    path_w: Path
    path_l: Path


def _read_table(path: Path) -> pd.DataFrame:
    """CSV or JSON lines → frame of str (no NA inference); blank files give an empty frame."""
    if path.suffix == ".jsonl":
        from fairsample.data.folder import _read_jsonl

        return _read_jsonl(path)
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except pd.errors.ParserError as exc:
        detail = str(exc).strip().replace("Error tokenizing data. C error: ", "")
        raise DataError(_BAD_CSV.format(file=path, detail=detail)) from exc
    except UnicodeDecodeError as exc:
        raise DataError(_NOT_UTF8.format(file=path, detail=exc)) from exc


def read_preferences(
    path: str | os.PathLike[str],
    *,
    groups: Sequence[str],
    label_col: str = "label",
    attribute_values: Mapping[str, Sequence[str]] | None = None,
    label_values: Sequence[str] | None = None,
    prompts: Mapping[str, CellKey] | None = None,
    check_files: bool = True,
    max_reported: int = 3,
) -> list[PreferencePair]:
    """Read and validate ``preferences.csv`` (or ``.jsonl``) into preference pairs.

    Args:
        path: the file; relative image paths inside it are resolved against its folder.
        groups: the sensitive-attribute columns, in cell order (the dataset's / model's groups).
        label_col: the label column (``label`` is accepted as an alias when the file has no ``label_col`` column).
        attribute_values: ``{attribute: known values}``; a pair whose value is not listed raises. ``None``: any value.
        label_values: known labels; ``None``: any label.
        prompts: ``{prompt text: cell}`` of the model's cells; used when the file has a ``text`` column instead of
            the cell columns (Stable-Diffusion-style models).
        check_files: check that every image file exists (all rows are checked before raising).
        max_reported: how many missing files the error message shows.

    Returns:
        One :class:`PreferencePair` per row, in file order; ``cell.groups`` follow ``groups`` order.

    Raises:
        DataError: a missing file, unparsable text, no rows, missing columns, blank values, the same image as winner
            and loser, a cell unknown to the model, or missing image files (one line each).

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "preferences.csv").write_text("file_w,file_l,tone,label\\na.png,b.png,dark,3\\n")
        >>> pairs = read_preferences(d / "preferences.csv", groups=["tone"], check_files=False)
        >>> str(pairs[0].cell), pairs[0].path_w.name
        ('tone=dark,label=3', 'a.png')
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(_NO_FILE.format(file=path))
    groups = list(groups)
    cell_cols = groups + [label_col]
    frame = _read_table(path).rename(columns=lambda c: _ALIASES.get(str(c).strip(), str(c).strip()))
    if len(frame) == 0:
        raise DataError(_EMPTY.format(file=path, columns=cell_cols))
    present = list(frame.columns)
    for column in PREFERENCE_COLUMNS:
        if column not in frame.columns:
            raise DataError(_MISSING_IMAGE_COLUMN.format(file=path, column=column, present=present))
    label_src = label_col if label_col in frame.columns or "label" not in frame.columns else "label"
    missing = [c for c in groups if c not in frame.columns] + ([] if label_src in frame.columns else [label_col])
    use_text = bool(missing) and "text" in frame.columns
    if missing and not use_text:
        hint = " (or a `text` column with the cell's prompt, for Stable-Diffusion-style models)"
        fields = {"missing": missing, "present": present, "columns": cell_cols, "text_hint": hint}
        raise DataError(_MISSING_CELL_COLUMNS.format(file=path, **fields))
    if use_text and prompts is None:
        raise DataError(_TEXT_NEEDS_PROMPTS.format(file=path, columns=cell_cols))

    known = {g: list(v) for g, v in (attribute_values or {}).items()}
    value_cols = ["text"] if use_text else groups + [label_src]
    root = path.absolute().parent
    pairs: list[PreferencePair] = []
    absent: list[str] = []
    for i, rec in enumerate(frame.to_dict("records")):
        row = i + 1
        vals = {c: str(rec[c]).strip() for c in (*PREFERENCE_COLUMNS, *value_cols)}
        for column, value in vals.items():
            if not value:
                raise DataError(_BLANK.format(row=row, file=path, column=column))
        if vals["file_w"] == vals["file_l"]:
            raise DataError(_SAME_IMAGE.format(row=row, file=path, value=vals["file_w"]))
        if use_text:
            assert prompts is not None
            cell = prompts.get(vals["text"])
            if cell is None:
                example = next(iter(prompts), "")
                raise DataError(
                    _UNKNOWN_TEXT.format(row=row, file=path, value=vals["text"], example=example, columns=cell_cols)
                )
        else:
            for g in groups:
                if g in known and vals[g] not in known[g]:
                    raise DataError(_UNKNOWN_VALUE.format(row=row, file=path, column=g, value=vals[g], known=known[g]))
            label = vals[label_src]
            if label_values is not None and label not in label_values:
                raise DataError(
                    _UNKNOWN_VALUE.format(row=row, file=path, column=label_col, value=label, known=list(label_values))
                )
            cell = CellKey(tuple((g, vals[g]) for g in groups), label)
        resolved = []
        for column in PREFERENCE_COLUMNS:
            p = Path(vals[column])
            full = p if p.is_absolute() else root / p
            if check_files and not full.is_file():
                absent.append(f"row {row} {column} {vals[column]!r}")
            resolved.append(full)
        pairs.append(PreferencePair(cell, resolved[0], resolved[1]))
    if absent:
        first = "; ".join(absent[:max_reported]) + ("; ..." if len(absent) > max_reported else "")
        raise DataError(_MISSING_IMAGES.format(count=len(absent), file=path, first=first, root=root))
    return pairs


def write_preferences(
    path: str | os.PathLike[str],
    pairs: Sequence[PreferencePair],
    *,
    groups: Sequence[str],
    label_col: str = "label",
    extra: Mapping[str, Sequence[object]] | None = None,
) -> Path:
    """Write ``preferences.csv``: ``file_w, file_l``, the cell columns, then ``extra`` columns (one value per pair).

    Image paths inside the file's folder are written relative to it, other paths absolute.

    Returns:
        The written path.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> pair = PreferencePair(CellKey((("tone", "dark"),), "3"), d / "a.png", d / "b.png")
        >>> p = write_preferences(d / "preferences.csv", [pair], groups=["tone"], extra={"conf_w": [0.9]})
        >>> p.read_text().splitlines()
        ['file_w,file_l,tone,label,conf_w', 'a.png,b.png,dark,3,0.9']
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = path.parent.resolve()
    extra = dict(extra or {})

    def rel(p: Path) -> str:
        try:
            return Path(p).resolve().relative_to(root).as_posix()
        except ValueError:
            return str(Path(p).resolve())

    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh, lineterminator="\n")
        out.writerow([*PREFERENCE_COLUMNS, *groups, label_col, *extra])
        for k, pair in enumerate(pairs):
            values = dict(pair.cell.groups)
            for g in groups:
                if g not in values:
                    raise DataError(_WRITE_MISSING.format(file=path, index=k, column=g))
            out.writerow(
                [
                    rel(pair.path_w),
                    rel(pair.path_l),
                    *[values[g] for g in groups],
                    pair.cell.label,
                    *[col[k] for col in extra.values()],
                ]
            )
    return path
