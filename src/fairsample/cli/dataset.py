"""The dataset options every dataset-reading command shares (STYLE.md §5, §6.1): one definition, used everywhere.

``data check``, ``train``, ``evaluate`` (its ``--real``), ``augment``, ``prefs build``, ``study`` and
``tune-perturbation`` declare the same five options from the types below and read their folder with
:meth:`DatasetOptions.load`, so a folder with its own column names and no ``fairsample.toml`` is described the same way
everywhere. This module imports nothing heavy: :func:`check_folder` answers a bad path before torch or pandas load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fairsample.core.errors import DataError

if TYPE_CHECKING:
    from fairsample.data.folder import FolderDataset

#: the five flags, in the order every command lists them
DATASET_FLAGS: tuple[str, ...] = ("--label-col", "--group-col", "--patient-col", "--preset", "--drop-unknown")

LabelColOpt = Annotated[str | None, typer.Option("--label-col", help="Label column (overrides fairsample.toml).")]
GroupColOpt = Annotated[
    list[str] | None,
    typer.Option("--group-col", help="Sensitive-attribute column; repeat for several (overrides fairsample.toml)."),
]
PatientColOpt = Annotated[
    str | None,
    typer.Option(
        "--patient-col", help="Patient id column: splits keep each patient's images in one split (no leakage)."
    ),
]
PresetOpt = Annotated[
    str | None, typer.Option("--preset", help="Native layout: fitzpatrick17k, ham10000, chexpert, nih.")
]
DropUnknownOpt = Annotated[
    bool, typer.Option("--drop-unknown", help="Drop rows whose group value is unknown instead of failing.")
]

_NO_FOLDER = "{what} {root} does not exist; pass the dataset folder that holds metadata.csv."
_NOT_A_FOLDER = "{what} {root} is not a folder; pass the dataset folder that holds metadata.csv."


def check_folder(root: Path, flag: str | None = None) -> None:
    """Fail fast (no heavy import) when a dataset path does not exist or is not a folder; ``flag`` names the option."""
    what = flag or "dataset folder"
    if not root.exists():
        raise DataError(_NO_FOLDER.format(what=what, root=root))
    if not root.is_dir():
        raise DataError(_NOT_A_FOLDER.format(what=what, root=root))


@dataclass(frozen=True)
class DatasetOptions:
    """How a dataset folder is read: the five shared flags (None/empty: ``fairsample.toml`` or the defaults)."""

    label_col: str | None = None  # --label-col
    group_cols: tuple[str, ...] = ()  # --group-col, repeatable
    patient_col: str | None = None  # --patient-col: grouped splits
    preset: str | None = None  # --preset: a native layout
    drop_unknown: bool = False  # --drop-unknown

    @classmethod
    def of(
        cls,
        label_col: str | None,
        group_col: list[str] | None,
        patient_col: str | None,
        preset: str | None,
        drop_unknown: bool,
    ) -> DatasetOptions:
        """From a command's parameters, in :data:`DATASET_FLAGS` order."""
        return cls(label_col, tuple(group_col or ()), patient_col, preset, bool(drop_unknown))

    def load_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`fairsample.data.folder.load_folder` (None: not overridden)."""
        return {
            "label_col": self.label_col,
            "group_cols": list(self.group_cols) or None,
            "patient_col": self.patient_col,
            "preset": self.preset,
            "drop_unknown": self.drop_unknown or None,
        }

    def load(self, root: Path, *, flag: str | None = None) -> FolderDataset:
        """Check the path, then read and validate the folder with these options."""
        check_folder(root, flag)
        from fairsample.data.folder import load_folder

        return load_folder(root, **self.load_kwargs())
