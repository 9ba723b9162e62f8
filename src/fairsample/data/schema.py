"""Dataset schema: which columns mean what (:class:`DatasetSpec`) and the cell key (:class:`CellKey`).

A *cell* is one combination of sensitive-attribute values and label, e.g. ``tone=dark,label=3``. Resampling,
class-diversity losses, generation plans, attribute switching and per-group metrics all speak in cells (design
README §2). Cells are explicit metadata keys, never prompt substrings (METHODS.md §2.3).
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fairsample.core.errors import DataError

_BAD_CELL_TEXT = (
    "`cells` entry {text!r} is not of the form 'attr=value,...,label=value'; expected keys {keys} (e.g. {example!r})."
)
_MISSING_CELL_KEY = "`cells` entry {text!r} lacks {missing}; give every attribute and the label (e.g. {example!r})."
_UNKNOWN_CELL_KEY = "`cells` entry {text!r} has unknown key(s) {extra}; known keys are {keys}."


@dataclass(frozen=True, order=True)
class CellKey:
    """One (sensitive-attribute values, label) combination.

    Attributes:
        groups: ``((attribute, value), ...)`` in the order of :attr:`DatasetSpec.groups`; values are strings.
        label: the label value as a string.

    Example:
        >>> c = CellKey((("tone", "dark"),), "3")
        >>> str(c)
        'tone=dark,label=3'
        >>> c.value("tone")
        'dark'
    """

    groups: tuple[tuple[str, str], ...]
    label: str

    def value(self, attribute: str) -> str:
        """The value of one sensitive attribute (``KeyError`` if the cell has no such attribute)."""
        for name, val in self.groups:
            if name == attribute:
                return val
        raise KeyError(attribute)

    def as_dict(self, label_col: str = "label") -> dict[str, str]:
        """``{attribute: value, ..., label_col: label}``, e.g. to write a metadata row."""
        out = dict(self.groups)
        out[label_col] = self.label
        return out

    def replace(self, **values: str) -> CellKey:
        """A copy with some attribute values (or ``label=``) replaced, e.g. ``cell.replace(tone="dark")``."""
        label = values.pop("label", self.label)
        names = {n for n, _ in self.groups}
        extra = set(values) - names
        if extra:
            raise KeyError(f"cell {self} has no attribute(s) {sorted(extra)}")
        return CellKey(tuple((n, values.get(n, v)) for n, v in self.groups), label)

    def to_text(self, label_col: str = "label") -> str:
        """``'attr=value,...,label=value'``; the inverse of :func:`parse_cell`."""
        parts = [f"{n}={v}" for n, v in self.groups] + [f"{label_col}={self.label}"]
        return ",".join(parts)

    def __str__(self) -> str:
        return self.to_text()


def parse_cell(text: str, groups: Iterable[str], label_col: str = "label") -> CellKey:
    """Parse ``'tone=dark,label=3'`` into a :class:`CellKey` with attributes in ``groups`` order.

    Args:
        text: comma-separated ``key=value`` pairs; every attribute of ``groups`` and ``label_col`` must appear once.
            ``label=`` is accepted as an alias of ``label_col``.
        groups: the sensitive attributes, in spec order.
        label_col: the label column name.

    Raises:
        DataError: malformed text, a missing key or an unknown key.

    Example:
        >>> parse_cell("label=3, tone=dark", ["tone"])
        CellKey(groups=(('tone', 'dark'),), label='3')
    """
    groups = list(groups)
    keys = groups + [label_col]
    example = ",".join(f"{k}=..." for k in keys)
    pairs: dict[str, str] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise DataError(_BAD_CELL_TEXT.format(text=text, keys=keys, example=example))
        k, v = (s.strip() for s in part.split("=", 1))
        if k == "label":
            k = label_col
        if not k or not v or k in pairs:
            raise DataError(_BAD_CELL_TEXT.format(text=text, keys=keys, example=example))
        pairs[k] = v
    extra = sorted(set(pairs) - set(keys))
    if extra:
        raise DataError(_UNKNOWN_CELL_KEY.format(text=text, extra=extra, keys=keys))
    missing = [k for k in keys if k not in pairs]
    if missing:
        raise DataError(_MISSING_CELL_KEY.format(text=text, missing=missing, example=example))
    return CellKey(tuple((g, pairs[g]) for g in groups), pairs[label_col])


@dataclass(frozen=True)
class DatasetSpec:
    """Which metadata columns mean what (``fairsample.toml``, STYLE.md §6.1).

    Example:
        >>> spec = DatasetSpec(label="label", groups=("tone",))
        >>> DatasetSpec.from_dict(spec.to_dict()) == spec
        True
    """

    label: str = "label"  # label column (one label per image)
    groups: tuple[str, ...] = ()  # sensitive-attribute columns, in cell order
    file_col: str = "file_name"  # image path column, relative to the dataset root
    unknown: tuple[str, ...] = ("", "-1", "unknown", "nan")  # values that mean "group not recorded"
    split: str | None = None  # optional column with train/val/test (also "validation", "valid")
    patient_col: str | None = None  # optional id column; splits never separate rows sharing an id
    min_group_size: int = 20  # warn when a group has fewer images
    values: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # per-column value maps (raw -> name)
    drop_unknown: bool = False  # drop rows with an unknown group value instead of failing
    preset: str | None = None  # the preset this spec came from, recorded for provenance

    def __post_init__(self) -> None:
        object.__setattr__(self, "groups", tuple(self.groups))
        object.__setattr__(self, "unknown", tuple(str(u) for u in self.unknown))
        object.__setattr__(self, "values", {k: {str(a): str(b) for a, b in v.items()} for k, v in self.values.items()})
        if self.label in self.groups:
            raise DataError(f"`label` column {self.label!r} is also listed in `groups`; a column is one or the other.")
        if len(set(self.groups)) != len(self.groups):
            raise DataError(f"`groups` lists a column twice: {list(self.groups)}.")
        if self.min_group_size < 0:
            raise DataError(f"`min_group_size` must be >= 0, got {self.min_group_size}.")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (round-trips through :meth:`from_dict`)."""
        return {
            "label": self.label,
            "groups": list(self.groups),
            "file_col": self.file_col,
            "unknown": list(self.unknown),
            "split": self.split,
            "patient_col": self.patient_col,
            "min_group_size": self.min_group_size,
            "values": {k: dict(v) for k, v in self.values.items()},
            "drop_unknown": self.drop_unknown,
            "preset": self.preset,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetSpec:
        """Build from a dict such as a parsed ``fairsample.toml``; unknown keys raise :class:`DataError`."""
        known = set(cls.__dataclass_fields__)
        extra = sorted(set(data) - known)
        if extra:
            raise DataError(f"unknown dataset setting(s) {extra}; known settings are {sorted(known)}.")
        kw = dict(data)
        if isinstance(kw.get("groups"), str):
            kw["groups"] = (kw["groups"],)
        return cls(**kw)

    @classmethod
    def from_toml(cls, path: str | Path) -> DatasetSpec:
        """Read ``fairsample.toml``; a syntax error raises :class:`DataError` naming the file."""
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise DataError(
                f"{path} is not valid TOML ({exc}); fix the file or delete it and pass --label-col/--group-col."
            ) from exc
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> DatasetSpec:
        """A copy with some fields changed (``None`` values are ignored, so CLI flags can be passed through)."""
        d = self.to_dict()
        d.update({k: v for k, v in changes.items() if v is not None})
        return DatasetSpec.from_dict(d)
