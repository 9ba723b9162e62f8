"""Dataset folders, specs, cells, presets and splits (STYLE.md §6.1, §6.3).

Example:
    >>> from fairsample.data import CellKey, parse_cell
    >>> parse_cell("tone=dark,label=3", ["tone"]) == CellKey((("tone", "dark"),), "3")
    True
"""

from fairsample.data.folder import (
    FolderDataset,
    find_metadata,
    load_folder,
    read_metadata,
    spec_to_toml,
    write_metadata,
)
from fairsample.data.presets import PRESETS, Preset, apply_preset, get_preset
from fairsample.data.schema import CellKey, DatasetSpec, parse_cell
from fairsample.data.splits import SPLIT_NAMES, split_indices
from fairsample.data.tables import check_report, count_table, format_count_table

__all__ = [
    "PRESETS",
    "SPLIT_NAMES",
    "CellKey",
    "DatasetSpec",
    "FolderDataset",
    "Preset",
    "apply_preset",
    "check_report",
    "count_table",
    "find_metadata",
    "format_count_table",
    "get_preset",
    "load_folder",
    "parse_cell",
    "read_metadata",
    "spec_to_toml",
    "split_indices",
    "write_metadata",
]
