"""Dataset folders: ``metadata.csv|jsonl`` + images (+ ``fairsample.toml``), a superset of HF imagefolder.

:func:`load_folder` reads a folder, resolves its spec and validates it (STYLE.md §6.1, §8; the checks are in
:mod:`fairsample.data.validate`) into a :class:`FolderDataset`; :func:`write_metadata` writes one back. The count
tables (:func:`~fairsample.data.tables.count_table`, :func:`~fairsample.data.tables.format_count_table`,
:func:`~fairsample.data.tables.check_report`) live in :mod:`fairsample.data.tables` and are re-exported here.

Spec resolution: defaults < ``fairsample.toml`` in the root < preset < explicit ``spec`` < flags (``label_col``,
``group_cols``, ``patient_col``, ``drop_unknown``). An explicit ``spec`` replaces the toml and preset specs wholesale.
Metadata is read as text only (CSV or JSON lines; nothing is unpickled), every value a ``str``.
"""

from __future__ import annotations

import json
import os
import tomllib
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from fairsample.core.atomic import atomic_path, write_atomic
from fairsample.core.errors import ConfigError, DataError, FairsampleWarning
from fairsample.data import presets as _presets
from fairsample.data.schema import CellKey, DatasetSpec
from fairsample.data.tables import check_report, count_table, format_count_table, natural_key
from fairsample.data.validate import (
    _apply_unknown,
    _apply_values,
    _check_columns,
    _check_paths,
    _check_rows,
    _soft_warnings,
)

__all__ = [
    "METADATA_FILES",
    "SPEC_FILE",
    "FolderDataset",
    "check_report",
    "count_table",
    "find_metadata",
    "format_count_table",
    "load_folder",
    "natural_key",
    "read_metadata",
    "spec_to_toml",
    "write_metadata",
]

METADATA_FILES: tuple[str, str] = ("metadata.csv", "metadata.jsonl")
SPEC_FILE = "fairsample.toml"

_NOT_A_DIR = "dataset root {root} is not a directory; pass the folder that holds metadata.csv."
_NO_METADATA = (
    "no metadata file in {root} (looked for {names}); add metadata.csv with a file_name column, "
    "or pass --preset NAME for a dataset's native file."
)
_TWO_METADATA = "{root} has both metadata.csv and metadata.jsonl; keep one of them."
_BAD_CSV = "{file} is not valid CSV ({detail}); fix that line (quote values that contain commas)."
_NOT_UTF8 = "{file} is not UTF-8 text ({detail}); re-save it as UTF-8."
_BAD_JSONL = "{file} line {line} is not a JSON object ({detail}); write one object per line."
_EMPTY = "{file} has no rows; add one row per image."
_BAD_TOML = "{file} is not valid TOML ({detail}); fix the file or delete it and pass --label-col/--group-col."
_BAD_SPEC_SETTING = "{file}: {detail}"
_BAD_SPEC_TYPE = "{source}: `{key}` must be {expected}, got {value!r}."
_BAD_IMAGE = "cannot read image {path} ({detail}); replace the file or remove its row."
_BAD_SIZE = "`size` must be a positive int or a (width, height) pair of positive ints, got {value!r}."
_OPTIONS_WITHOUT_PRESET = "`preset_options` {options} were given without `preset`; pass --preset NAME as well."
_METADATA_EXISTS = "{root} already has {other}; remove it before writing {name} (a folder holds one metadata file)."
_WRITE_MISSING_COLUMNS = (
    "cannot write metadata: the frame lacks column(s) {missing} named by the spec (columns: {present})."
)


def _cell_key(cell: CellKey) -> tuple:
    """Natural sort key of a cell: attribute values in spec order, then the label."""
    return (tuple(natural_key(v) for _, v in cell.groups), natural_key(cell.label))


def _check_size(size: Any) -> tuple[int, int] | None:
    """None, an int or a (width, height) pair of positive ints -> (width, height) or None."""
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int) else tuple(size) if isinstance(size, tuple | list) else ()
    if len(pair) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in pair):
        raise ConfigError(_BAD_SIZE.format(value=size))
    return (pair[0], pair[1])


class FolderDataset:
    """A validated dataset folder: one frame row per image, every value a string.

    Attributes:
        root: the dataset root; ``frame[spec.file_col]`` is relative to it.
        spec: the resolved :class:`DatasetSpec`.
        frame: ``(N, columns)`` table with at least ``spec.file_col``, ``spec.label`` and ``spec.groups`` (values
            mapped through ``spec.values``), plus the metadata's other columns; rows indexed ``0..N-1``.
        warnings: validation warnings issued on load (each also emitted as a :class:`FairsampleWarning`).

    Example:
        >>> frame = pd.DataFrame({"file_name": ["a.png", "b.png"], "label": ["1", "0"], "sex": ["F", "M"]})
        >>> ds = FolderDataset("/data/x", DatasetSpec(groups=("sex",)), frame)
        >>> len(ds), [str(c) for c in ds.cells()], ds.image_path(0).name
        (2, ['sex=F,label=1', 'sex=M,label=0'], 'a.png')
    """

    def __init__(
        self, root: str | os.PathLike[str], spec: DatasetSpec, frame: pd.DataFrame, warnings: Iterable[str] = ()
    ) -> None:
        self.root = Path(root)
        self.spec = spec
        self.frame = frame.reset_index(drop=True)
        self.warnings = list(warnings)
        self._cell_ids: list[CellKey] | None = None

    def __len__(self) -> int:
        return len(self.frame)

    def __repr__(self) -> str:
        return (
            f"FolderDataset(root={str(self.root)!r}, n_images={len(self)}, label={self.spec.label!r}, "
            f"groups={list(self.spec.groups)})"
        )

    def cell_ids(self) -> list[CellKey]:
        """The cell of every row, in row order (one shared :class:`CellKey` object per distinct cell)."""
        if self._cell_ids is None:
            groups = self.spec.groups
            columns = [self.frame[g].tolist() for g in groups] + [self.frame[self.spec.label].tolist()]
            interned: dict[tuple[str, ...], CellKey] = {}
            out = []
            for values in zip(*columns, strict=True):
                key = interned.get(values)
                if key is None:
                    key = interned[values] = CellKey(tuple(zip(groups, values[:-1], strict=True)), values[-1])
                out.append(key)
            self._cell_ids = out
        return self._cell_ids

    def cells(self) -> list[CellKey]:
        """Sorted unique cells present (attribute values, then label, numeric-aware)."""
        return sorted(set(self.cell_ids()), key=_cell_key)

    def cell_of(self, i: int) -> CellKey:
        """The cell of row ``i``."""
        return self.cell_ids()[i]

    def attribute_values(self) -> dict[str, list[str]]:
        """``{attribute: sorted values present}`` in spec order (numeric-aware sort)."""
        return {g: sorted(self.frame[g].unique().tolist(), key=natural_key) for g in self.spec.groups}

    def label_values(self) -> list[str]:
        """Sorted labels present, numeric-aware (``"2"`` before ``"10"``)."""
        return sorted(self.frame[self.spec.label].unique().tolist(), key=natural_key)

    def image_path(self, i: int) -> Path:
        """``root / file_name`` of row ``i``."""
        return self.root / self.frame[self.spec.file_col].iloc[i]

    def load_image(self, i: int, size: int | tuple[int, int] | None = None) -> Image.Image:
        """Row ``i``'s image as RGB.

        Args:
            i: row index.
            size: ``None`` keeps the file's size; an int gives a square; a pair is ``(width, height)`` as in PIL.
                Resizing is bicubic.

        Raises:
            DataError: the file is missing or not a readable image.
            ConfigError: a non-positive ``size``.
        """
        target = _check_size(size)
        path = self.image_path(i)
        try:
            with Image.open(path) as im:
                rgb = im.convert("RGB")
        except OSError as exc:
            raise DataError(_BAD_IMAGE.format(path=path, detail=exc)) from exc
        if target is not None and rgb.size != target:
            rgb = rgb.resize(target, Image.Resampling.BICUBIC)
        return rgb

    def subset(self, indices: Sequence[int] | np.ndarray) -> FolderDataset:
        """A dataset with the given rows (ints or a boolean mask), reindexed ``0..n-1``; same root, spec, warnings."""
        idx = np.asarray(indices)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64, copy=False)
        sub = FolderDataset(self.root, self.spec, self.frame.iloc[idx], self.warnings)
        if self._cell_ids is not None:
            sub._cell_ids = [self._cell_ids[j] for j in idx]
        return sub


# --------------------------------------------------------------------------------------------------------- reading


def _json_value(value: Any) -> str:
    """JSON value -> str; numbers keep their literal text (parse hooks), null -> ''."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value, ensure_ascii=False)


def _read_jsonl(path: Path) -> pd.DataFrame:
    """One JSON object per line; blank lines skipped; numbers kept as their literal text."""
    records: list[dict[str, str]] = []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(_NOT_UTF8.format(file=path.name, detail=exc)) from exc
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line, parse_int=str, parse_float=str, parse_constant=lambda _: None)
        except json.JSONDecodeError as exc:
            raise DataError(_BAD_JSONL.format(file=path.name, line=line_no, detail=exc.msg)) from exc
        if not isinstance(obj, dict):
            raise DataError(_BAD_JSONL.format(file=path.name, line=line_no, detail=f"got {type(obj).__name__}"))
        records.append({str(k): _json_value(v) for k, v in obj.items()})
    frame = pd.DataFrame.from_records(records)
    return frame.fillna("").astype(str) if len(frame.columns) else frame


def read_metadata(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a metadata table (``.csv``, ``.csv.gz`` or ``.jsonl``) with every value as ``str`` and no NA inference.

    Args:
        path: the file; blank cells stay ``""``, ``"1"`` stays ``"1"`` (never ``"1.0"``).

    Returns:
        ``(N, columns)`` frame of ``str`` indexed ``0..N-1`` (index i is data row i + 1 in messages).

    Raises:
        DataError: unparsable CSV / JSON (file and line named), non-UTF-8 text, or no rows.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "metadata.csv"
        >>> _ = p.write_text("file_name,label\\na.png,1\\nb.png,\\n")
        >>> read_metadata(p)["label"].tolist()
        ['1', '']
    """
    path = Path(path)
    if path.suffix == ".jsonl":
        frame = _read_jsonl(path)
    else:
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        except pd.errors.EmptyDataError:
            frame = pd.DataFrame()
        except pd.errors.ParserError as exc:
            detail = str(exc).strip().replace("Error tokenizing data. C error: ", "")
            raise DataError(_BAD_CSV.format(file=path.name, detail=detail)) from exc
        except UnicodeDecodeError as exc:
            raise DataError(_NOT_UTF8.format(file=path.name, detail=exc)) from exc
    if len(frame) == 0:
        raise DataError(_EMPTY.format(file=path.name))
    return frame


def find_metadata(root: str | os.PathLike[str], preset: str | None = None) -> Path:
    """The metadata file of a dataset root: a preset's native file (also ``.gz``) first, then ``metadata.csv|jsonl``.

    Raises:
        DataError: root is not a directory, no metadata file, or both ``metadata.csv`` and ``metadata.jsonl``.
        ConfigError: unknown preset.

    Example:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp()); _ = (root / "metadata.jsonl").write_text("{}")
        >>> find_metadata(root).name
        'metadata.jsonl'
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(_NOT_A_DIR.format(root=root))
    names: list[str] = []
    if preset is not None:
        for native in _presets.get_preset(preset).native_files:
            names += [native, native + ".gz"]
    for name in names:
        if (root / name).is_file():
            return root / name
    present = [name for name in METADATA_FILES if (root / name).is_file()]
    if len(present) == 2:
        raise DataError(_TWO_METADATA.format(root=root))
    if not present:
        raise DataError(_NO_METADATA.format(root=root, names=names + list(METADATA_FILES)))
    return root / present[0]


# ------------------------------------------------------------------------------------------------------- the spec


_SPEC_TYPES: dict[str, tuple[type | tuple[type, ...], str]] = {
    "label": (str, "one column name (a string)"),
    "file_col": (str, "a column name (a string)"),
    "split": (str, "a column name (a string)"),
    "patient_col": (str, "a column name (a string)"),
    "preset": (str, "a preset name (a string)"),
    "groups": ((list, tuple, str), "a list of column names"),
    "unknown": ((list, tuple), "a list of strings"),
    "min_group_size": (int, "an integer >= 0"),
    "drop_unknown": (bool, "true or false"),
    "values": (dict, "a table of {column: {raw: name}}"),
}


def _check_spec_types(data: Mapping[str, Any], source: str) -> None:
    """Type-check user spec settings (TOML or flags) so a wrong type fails with a named setting."""
    for key, value in data.items():
        if key not in _SPEC_TYPES or value is None:
            continue
        expected, text = _SPEC_TYPES[key]
        ok = isinstance(value, expected) and not (key == "min_group_size" and isinstance(value, bool))
        if ok and key == "groups" and not isinstance(value, str):
            ok = all(isinstance(g, str) for g in value)
        if ok and key == "values":
            ok = all(isinstance(m, dict) for m in value.values())
        if not ok:
            raise DataError(_BAD_SPEC_TYPE.format(source=source, key=key, expected=text, value=value))


def _read_spec_file(path: Path) -> dict[str, Any]:
    """Settings written in fairsample.toml (only those present), validated against DatasetSpec."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DataError(_BAD_TOML.format(file=path, detail=exc)) from exc
    _check_spec_types(data, str(path))
    try:
        DatasetSpec.from_dict(data)
    except (DataError, TypeError) as exc:
        raise DataError(_BAD_SPEC_SETTING.format(file=path, detail=exc)) from exc
    return data


def _resolve_spec(
    root: Path,
    *,
    spec: DatasetSpec | None,
    preset_fields: Mapping[str, Any],
    flags: Mapping[str, Any],
) -> DatasetSpec:
    """defaults < fairsample.toml < preset < explicit spec < flags."""
    if spec is not None:
        merged = spec.to_dict()
        if merged["preset"] is None and preset_fields:
            merged["preset"] = preset_fields["preset"]
    else:
        merged = DatasetSpec().to_dict()
        toml_path = root / SPEC_FILE
        if toml_path.is_file():
            merged.update(_read_spec_file(toml_path))
        merged.update(preset_fields)
    _check_spec_types(flags, "flags")
    merged.update({k: v for k, v in flags.items() if v is not None})
    if isinstance(merged["groups"], str):
        merged["groups"] = [merged["groups"]]
    return DatasetSpec.from_dict(merged)


def load_folder(
    root: str | os.PathLike[str],
    *,
    spec: DatasetSpec | None = None,
    label_col: str | None = None,
    group_cols: Sequence[str] | None = None,
    patient_col: str | None = None,
    preset: str | None = None,
    preset_options: Mapping[str, Any] | None = None,
    drop_unknown: bool | None = None,
    validate: bool = True,
    check_files: bool = True,
) -> FolderDataset:
    """Read and validate a dataset folder.

    Args:
        root: folder holding ``metadata.csv`` or ``metadata.jsonl`` (or a preset's native file), images and
            optionally ``fairsample.toml``.
        spec: explicit spec; replaces ``fairsample.toml`` and the preset's spec (the preset still converts the table).
        label_col: ``--label-col``; overrides the spec's label column.
        group_cols: ``--group-col`` (repeatable); overrides the spec's groups.
        patient_col: ``--patient-col``; overrides the spec's patient id column (grouped splits).
        preset: a key of :data:`~fairsample.data.presets.PRESETS`; reads the native file and maps its columns.
        preset_options: keyword options of the preset (see :func:`~fairsample.data.presets.apply_preset`).
        drop_unknown: ``--drop-unknown``; drop rows with an unknown group value (with a warning) instead of failing.
        validate: check row values (blank labels, unknown or unmapped values, repeated files, split names) and emit
            the small-group / single-label warnings. Column and path-safety checks always run.
        check_files: check that every ``file_name`` exists under ``root``.

    Returns:
        The :class:`FolderDataset`, rows in file order (minus dropped rows).

    Raises:
        DataError: any hard validation failure (one line naming the file, column, first row and the fix).
        ConfigError: unknown preset or preset option.

    Warns:
        FairsampleWarning: small groups, single-label groups, dropped unknown rows (also in ``ds.warnings``).

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for name in ("a.png", "b.png"):
        ...     Image.new("RGB", (4, 4)).save(root / name)
        >>> _ = (root / "metadata.csv").write_text("file_name,label,sex\\na.png,1,F\\nb.png,0,F\\n")
        >>> ds = load_folder(root, group_cols=["sex"], validate=False)
        >>> len(ds), ds.label_values(), ds.load_image(0, size=8).size
        (2, ['0', '1'], (8, 8))
    """
    root = Path(root)
    path = find_metadata(root, preset)
    frame = read_metadata(path)
    fields: dict[str, Any] = {}
    if preset is not None:
        frame, fields = _presets.preset_fields(frame, preset, dict(preset_options or {}))
    elif preset_options:
        raise ConfigError(_OPTIONS_WITHOUT_PRESET.format(options=dict(preset_options)))
    if isinstance(group_cols, str):
        group_cols = [group_cols]
    flags = {
        "label": label_col,
        "groups": list(group_cols) if group_cols is not None else None,
        "patient_col": patient_col,
        "drop_unknown": drop_unknown,
    }
    resolved = _resolve_spec(root, spec=spec, preset_fields=fields, flags=flags)
    file = path.name
    _check_columns(frame, resolved, file, root)
    frame = frame.copy()
    for col in {resolved.file_col, resolved.label, *resolved.groups}:
        frame[col] = frame[col].astype(str).str.strip()
    frame, notes = _apply_unknown(frame, resolved, file, validate)
    frame = _apply_values(frame, resolved, file, validate)
    if validate:
        _check_rows(frame, resolved, file)
    _check_paths(frame, resolved, file, root, check_files)
    if validate:
        notes += _soft_warnings(frame, resolved)
    for note in notes:
        warnings.warn(note, FairsampleWarning, stacklevel=2)
    return FolderDataset(root, resolved, frame, notes)


# ---------------------------------------------------------------------------------------------------------- writing


def _toml_str(text: str) -> str:
    """TOML basic string (control characters and DEL escaped)."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(value: Any) -> str:
    """TOML literal for str / bool / int / list of those."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return _toml_str(str(value))


def spec_to_toml(spec: DatasetSpec) -> str:
    """``fairsample.toml`` text for a spec (``None`` settings omitted; round-trips through ``DatasetSpec.from_toml``).

    Example:
        >>> print(spec_to_toml(DatasetSpec(groups=("race",), values={"race": {"0": "Asian"}})).splitlines()[-1])
        "0" = "Asian"
    """
    data = spec.to_dict()
    lines = ["# fairsample dataset spec: which metadata columns mean what (written by fairsample)"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in data.items() if k != "values" and v is not None]
    for column, mapping in data["values"].items():
        lines += ["", f"[values.{_toml_str(column)}]"]
        lines += [f"{_toml_str(raw)} = {_toml_str(name)}" for raw, name in mapping.items()]
    return "\n".join(lines) + "\n"


def write_metadata(root: str | os.PathLike[str], frame: pd.DataFrame, spec: DatasetSpec) -> Path:
    """Write ``root/metadata.csv`` and ``root/fairsample.toml`` atomically (temporary file + ``os.replace``).

    Args:
        root: dataset root (created if missing). ``frame[spec.file_col]`` must be relative to it.
        frame: one row per image with the spec's file, label and group columns; the file column is written first,
            other columns in frame order; the index is not written.
        spec: written as ``fairsample.toml`` so :func:`load_folder` reads the folder back without flags.

    Returns:
        The path of ``metadata.csv``.

    Raises:
        DataError: the frame lacks a column the spec names, or ``root`` already holds ``metadata.jsonl``.

    Example:
        >>> import tempfile
        >>> frame = pd.DataFrame({"file_name": ["a.png"], "label": ["1"], "sex": ["F"]})
        >>> write_metadata(tempfile.mkdtemp(), frame, DatasetSpec(groups=("sex",))).name
        'metadata.csv'
    """
    root = Path(root)
    needed = [spec.file_col, spec.label, *spec.groups]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise DataError(_WRITE_MISSING_COLUMNS.format(missing=missing, present=list(frame.columns)))
    root.mkdir(parents=True, exist_ok=True)
    if (root / METADATA_FILES[1]).exists():
        raise DataError(_METADATA_EXISTS.format(root=root, other=METADATA_FILES[1], name=METADATA_FILES[0]))
    ordered = frame[[spec.file_col] + [c for c in frame.columns if c != spec.file_col]]
    out = root / METADATA_FILES[0]
    with atomic_path(out) as tmp:
        ordered.to_csv(tmp, index=False, encoding="utf-8")
    write_atomic(root / SPEC_FILE, spec_to_toml(spec))
    return out
