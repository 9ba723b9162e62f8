"""The held-out inputs of an evaluation (issue #12): the counterfactual test set and the oracle's real images.

- A **counterfactual set** is an ordinary dataset folder whose ``metadata.csv`` also has a ``content_id`` column: rows
  with the same ``content_id`` are the same content rendered in different values of a sensitive attribute (for the
  tone-digits demo: the same held-out digit painted light, medium and dark). It is only ever predicted, never used
  for training or checkpoint selection. Its label and attribute values must occur in the real data; it needs the
  label column and at least one reported attribute with two or more values (attributes it lacks get no
  counterfactual view).
- An **oracle set** is an ordinary dataset folder of real held-out images; every image joins the real train split
  in the oracle row. It needs the label and every reported attribute column, with values known to the real data.

Neither may contain real images: :func:`overlap` hashes file bytes (and compares ``content_id`` values when the real
metadata has that column); the evaluation warns when anything is shared. Loading and checking read metadata and
file bytes only (pandas, no torch).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from typing import Any

from fairsample.core.errors import ConfigError, DataError, FairsampleWarning
from fairsample.data.folder import FolderDataset, find_metadata, load_folder, read_metadata
from fairsample.data.tables import natural_key

__all__ = ["CONTENT_COLUMN", "file_hashes", "load_heldout", "overlap", "pairing"]

#: the column that pairs renderings of the same content in a counterfactual set
CONTENT_COLUMN = "content_id"

_BAD_KIND = "`{arg}` must be a FolderDataset or a dataset folder path, got {kind}."
_LOAD = "`{arg}` set {root}: {detail}"
_MISSING = "`{arg}` set {root} has no {what} column {column!r} (columns: {present}); add it to its metadata.csv{fix}."
_NO_ATTRIBUTE = (
    "`counterfactual` set {root} has none of the attribute columns {attrs} (columns: {present}); add the column "
    "that says which value each rendering is in."
)
_ONE_VALUE = (
    "`counterfactual` set {root} has a single value of every attribute ({values}); render each content in at least "
    "2 values of the attribute."
)
_UNSEEN = (
    "`{arg}` set {root}: {column} value(s) {values} do not occur in the real data (real values: {real}); relabel or "
    "drop those rows."
)
_BYTES_OVERLAP = (
    "`{arg}` set {root}: {n} image(s) are byte-identical to {other} images (first: {file} = {other_file}); {why}"
)
_CONTENT_OVERLAP = (
    "`counterfactual` set {root}: {n} content_id value(s) also occur in the real data's content_id column (first: "
    "{value!r}); held-out content must not be in the real data."
)
_UNPAIRED = (
    "`counterfactual` set {root}: {n} of {total} content_id value(s) are not rendered exactly once in every "
    "{attribute} value {values}; its {attribute} gaps are not paired on identical content."
)
_WHY = {
    "real": "held-out images must not be in the real data (a classifier may have trained on them).",
    "counterfactual": "the oracle would train on the counterfactual test content.",
}


def _columns(arg: str, value: Any) -> tuple[list[str], str]:
    """Column names and a printable root, read from metadata only (no validation yet)."""
    if isinstance(value, FolderDataset):
        return list(value.frame.columns), str(value.root)
    if not isinstance(value, str | os.PathLike):
        raise ConfigError(_BAD_KIND.format(arg=arg, kind=type(value).__name__))
    try:
        return list(read_metadata(find_metadata(value)).columns), str(value)
    except DataError as exc:
        raise DataError(_LOAD.format(arg=arg, root=value, detail=exc)) from None


def load_heldout(
    arg: str, value: Any, real: FolderDataset, attrs: Sequence[str]
) -> tuple[FolderDataset, tuple[str, ...]]:
    """Load and check a counterfactual (``arg="counterfactual"``) or oracle (``arg="oracle"``) set.

    Args:
        arg: ``"counterfactual"`` or ``"oracle"`` (the argument named in errors).
        value: a :class:`FolderDataset` or a dataset folder path.
        real: the real dataset (its label column and values are the reference).
        attrs: the reported sensitive attributes.

    Returns:
        ``(dataset, attributes)``: the set with the real label column, and the attributes it can be reported by
        (counterfactual: the reported attributes it has with ≥ 2 values; oracle: every reported attribute).

    Raises:
        ConfigError: ``value`` is neither a dataset nor a path.
        DataError: a missing label / ``content_id`` / attribute column, or values the real data lacks (one line,
            naming ``arg``).

    Example:
        >>> import pandas as pd
        >>> from fairsample.data import DatasetSpec
        >>> real = FolderDataset("r", DatasetSpec(groups=("tone",)), pd.DataFrame(
        ...     {"file_name": ["a", "b"], "label": ["0", "1"], "tone": ["dark", "light"]}))
        >>> cf = FolderDataset("c", DatasetSpec(groups=("tone",)), pd.DataFrame({"file_name": ["x", "y"],
        ...     "label": ["1", "1"], "tone": ["dark", "light"], "content_id": ["7", "7"]}))
        >>> load_heldout("counterfactual", cf, real, ["tone"])[1]
        ('tone',)
    """
    present, root = _columns(arg, value)
    label = real.spec.label
    counterfactual = arg == "counterfactual"
    needed = [("label", label, "")]
    if counterfactual:
        needed.append(
            ("content", CONTENT_COLUMN, " (rows with the same content_id are one content in several values)")
        )
        usable = [a for a in attrs if a in present]
        if not usable:
            raise DataError(_NO_ATTRIBUTE.format(root=root, attrs=list(attrs), present=present))
    else:
        usable = list(attrs)
        needed += [("attribute", a, "") for a in attrs]
    for what, column, fix in needed:
        if column not in present:
            raise DataError(_MISSING.format(arg=arg, root=root, what=what, column=column, present=present, fix=fix))
    ds = _load(arg, value, real, usable)
    for column in (label, *usable):
        real_values = set(real.frame[column].astype(str))
        unseen = sorted(set(ds.frame[column].astype(str)) - real_values, key=natural_key)
        if unseen:
            raise DataError(
                _UNSEEN.format(
                    arg=arg, root=root, column=column, values=unseen, real=sorted(real_values, key=natural_key)
                )
            )
    if counterfactual:
        values = {a: sorted(set(ds.frame[a].astype(str)), key=natural_key) for a in usable}
        usable = [a for a in usable if len(values[a]) >= 2]
        if not usable:
            raise DataError(_ONE_VALUE.format(root=root, values=values))
    return ds, tuple(usable)


def _load(arg: str, value: Any, real: FolderDataset, groups: Sequence[str]) -> FolderDataset:
    """A FolderDataset with the real label column and ``groups`` as its groups."""
    if isinstance(value, FolderDataset):
        spec = value.spec
        if spec.label != real.spec.label or tuple(spec.groups) != tuple(groups):
            spec = spec.replace(label=real.spec.label, groups=tuple(groups))
            return FolderDataset(value.root, spec, value.frame, value.warnings)
        return value
    try:
        return load_folder(value, label_col=real.spec.label, group_cols=list(groups))
    except DataError as exc:
        raise DataError(_LOAD.format(arg=arg, root=value, detail=exc)) from None


def file_hashes(ds: FolderDataset) -> dict[str, str]:
    """``{blake2b-128 hex of the file bytes: file_name}`` of every image (first file per hash).

    Example:
        >>> import tempfile, pathlib, pandas as pd
        >>> from fairsample.data import DatasetSpec
        >>> root = pathlib.Path(tempfile.mkdtemp()); _ = (root / "a.png").write_bytes(b"x")
        >>> ds = FolderDataset(root, DatasetSpec(), pd.DataFrame({"file_name": ["a.png"], "label": ["0"]}))
        >>> list(file_hashes(ds).values())
        ['a.png']
    """
    out: dict[str, str] = {}
    files = ds.frame[ds.spec.file_col].astype(str).tolist()
    for i, name in enumerate(files):
        try:
            digest = hashlib.blake2b(ds.image_path(i).read_bytes(), digest_size=16).hexdigest()
        except OSError as exc:
            raise DataError(
                f"cannot read image {ds.image_path(i)} ({exc}); replace the file or remove its row."
            ) from exc
        out.setdefault(digest, name)
    return out


def overlap(
    arg: str,
    ds: FolderDataset,
    other: str,
    other_hashes: dict[str, str],
    *,
    real: FolderDataset | None = None,
) -> dict[str, Any]:
    """Images of ``ds`` byte-identical to the ``other`` set's (and, with ``real``, shared ``content_id`` values); each
    kind of overlap is warned once (FairsampleWarning).

    Returns:
        ``{"bytes": n, "first": [file, other_file] | None, "content_id": n | None}`` (``content_id`` None when not
        compared).
    """
    mine = file_hashes(ds)
    shared = [h for h in mine if h in other_hashes]
    out: dict[str, Any] = {"bytes": len(shared), "first": None, "content_id": None}
    if shared:
        out["first"] = [mine[shared[0]], other_hashes[shared[0]]]
        warnings.warn(
            _BYTES_OVERLAP.format(
                arg=arg,
                root=ds.root,
                n=len(shared),
                other=other,
                file=mine[shared[0]],
                other_file=other_hashes[shared[0]],
                why=_WHY[other],
            ),
            FairsampleWarning,
            stacklevel=2,
        )
    if real is not None and CONTENT_COLUMN in real.frame.columns and CONTENT_COLUMN in ds.frame.columns:
        common = sorted(
            set(ds.frame[CONTENT_COLUMN].astype(str)) & set(real.frame[CONTENT_COLUMN].astype(str)), key=natural_key
        )
        out["content_id"] = len(common)
        if common:
            warnings.warn(
                _CONTENT_OVERLAP.format(root=ds.root, n=len(common), value=common[0]), FairsampleWarning, stacklevel=2
            )
    return out


def pairing(ds: FolderDataset, attribute: str) -> dict[str, Any]:
    """Whether every ``content_id`` is rendered exactly once in every value of ``attribute`` (warns if not).

    Returns:
        ``{"paired": bool, "n_content": int, "n_unpaired": int, "values": [...]}``.

    Example:
        >>> import pandas as pd
        >>> from fairsample.data import DatasetSpec
        >>> cf = FolderDataset("c", DatasetSpec(groups=("tone",)), pd.DataFrame({"file_name": ["x", "y", "z", "w"],
        ...     "label": ["1"] * 4, "tone": ["dark", "light"] * 2, "content_id": ["7", "7", "8", "8"]}))
        >>> pairing(cf, "tone")
        {'paired': True, 'n_content': 2, 'n_unpaired': 0, 'values': ['dark', 'light']}
    """
    frame = ds.frame[[CONTENT_COLUMN, attribute]].astype(str)
    values = sorted(set(frame[attribute]), key=natural_key)
    counts = frame.groupby([CONTENT_COLUMN, attribute]).size().unstack(fill_value=0).reindex(columns=values)
    counts = counts.fillna(0)
    unpaired = int((counts != 1).any(axis=1).sum())
    if unpaired:
        warnings.warn(
            _UNPAIRED.format(root=ds.root, n=unpaired, total=len(counts), attribute=attribute, values=values),
            FairsampleWarning,
            stacklevel=2,
        )
    return {"paired": unpaired == 0, "n_content": len(counts), "n_unpaired": unpaired, "values": values}
