"""Per-group x label count tables and the ``data check`` report of a :class:`~fairsample.data.folder.FolderDataset`.

:func:`count_table`, :func:`format_count_table` and :func:`check_report` give the per-group x label counts printed
before any training or evaluation. :func:`natural_key` is the numeric-aware order of groups, labels and cells.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from fairsample.data.folder import FolderDataset


def natural_key(value: str) -> tuple[int, float, str]:
    """Sort key placing numeric strings first in numeric order ("2" < "10"), then text case-insensitively.

    Example:
        >>> sorted(["10", "2", "b", "A"], key=natural_key)
        ['2', '10', 'A', 'b']
    """
    try:
        number = float(value)
    except ValueError:
        return (1, 0.0, value.casefold() + "\0" + value)
    if not np.isfinite(number):
        return (1, 0.0, value.casefold() + "\0" + value)
    return (0, number, value)


def count_table(ds: FolderDataset) -> pd.DataFrame:
    """Per-group x label image counts.

    Rows: each attribute value (``"sex=F"``) in spec order; with two or more attributes also every intersection
    present (``"sex=F,race=Black"``); then ``"total"``. Columns: the labels (numeric-aware order) and ``"total"``.

    Returns:
        int64 frame indexed by group text (index name ``"group"``).

    Example:
        >>> from fairsample.data import DatasetSpec, FolderDataset
        >>> frame = pd.DataFrame({"file_name": ["a", "b", "c"], "label": ["1", "0", "1"], "sex": ["F", "M", "M"]})
        >>> count_table(FolderDataset(".", DatasetSpec(groups=("sex",)), frame)).loc["sex=M"].tolist()
        [1, 1, 2]
    """
    f, label, groups = ds.frame, ds.spec.label, list(ds.spec.groups)
    labels = ds.label_values()
    keysets = [[g] for g in groups] + ([groups] if len(groups) > 1 else [])
    blocks = []
    for keys in keysets:
        counts = f.groupby(keys + [label], sort=False).size().unstack(label, fill_value=0)
        if len(keys) == 1:
            counts.index = pd.MultiIndex.from_arrays([counts.index])
        order = sorted(counts.index, key=lambda vals: tuple(natural_key(v) for v in vals))
        counts = counts.reindex(order)
        counts.index = [",".join(f"{k}={v}" for k, v in zip(keys, vals, strict=True)) for vals in counts.index]
        blocks.append(counts)
    total = f[label].value_counts().to_frame().T
    total.index = ["total"]
    table = pd.concat(blocks + [total]).reindex(columns=labels).fillna(0).astype(np.int64)
    table["total"] = table.sum(axis=1)
    table.index.name = "group"
    table.columns.name = None
    return table


def format_count_table(ds: FolderDataset) -> str:
    """:func:`count_table` as aligned plain text (a rule above the total row), for the terminal.

    Example:
        >>> from fairsample.data import DatasetSpec, FolderDataset
        >>> frame = pd.DataFrame({"file_name": ["a", "b"], "label": ["1", "0"], "sex": ["F", "M"]})
        >>> print(format_count_table(FolderDataset(".", DatasetSpec(groups=("sex",)), frame)))
        group \\ label  0  1  total
        sex=F          0  1      1
        sex=M          1  0      1
        --------------------------
        total          1  1      2
    """
    table = count_table(ds)
    head = [f"group \\ {ds.spec.label}"] + [str(c) for c in table.columns]
    body = [[str(i)] + [str(v) for v in row] for i, row in zip(table.index, table.to_numpy().tolist(), strict=True)]
    widths = [max(len(r[k]) for r in [head] + body) for k in range(len(head))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        )

    rule = "-" * len(line(head))
    return "\n".join([line(head)] + [line(r) for r in body[:-1]] + [rule, line(body[-1])])


def check_report(ds: FolderDataset) -> dict[str, Any]:
    """JSON-safe summary for ``fairsample data check --format json``.

    Returns:
        ``{"root", "n_images", "label", "groups", "labels", "attribute_values", "cells", "warnings", "spec"}``;
        ``cells`` is a list of ``{"cell": "sex=F,label=1", "count": n, <attribute>: value, ..., <label col>: label}``
        in :meth:`~fairsample.data.folder.FolderDataset.cells` order.

    Example:
        >>> from fairsample.data import DatasetSpec, FolderDataset
        >>> frame = pd.DataFrame({"file_name": ["a", "b"], "label": ["1", "1"], "sex": ["F", "F"]})
        >>> check_report(FolderDataset(".", DatasetSpec(groups=("sex",)), frame))["cells"]
        [{'cell': 'sex=F,label=1', 'count': 2, 'sex': 'F', 'label': '1'}]
    """
    counts = Counter(ds.cell_ids())
    return {
        "root": str(ds.root),
        "n_images": len(ds),
        "label": ds.spec.label,
        "groups": list(ds.spec.groups),
        "labels": ds.label_values(),
        "attribute_values": ds.attribute_values(),
        "cells": [{"cell": str(c), "count": counts[c], **c.as_dict(ds.spec.label)} for c in ds.cells()],
        "warnings": list(ds.warnings),
        "spec": ds.spec.to_dict(),
    }
