"""Column maps from public medical-image datasets' native metadata into the fairsample schema (STYLE.md §6.3).

A preset turns the native metadata table of one dataset (read as strings) into a frame with a ``file_name`` column,
one label column and the sensitive-attribute columns, plus the :class:`~fairsample.data.schema.DatasetSpec` that says
which is which. Native columns are kept, so nothing is lost. Presets never touch the file system: :func:`load_folder`
finds the native file (``fitzpatrick17k.csv``, ``HAM10000_metadata.csv``, ``train.csv``, ...) and calls
:func:`apply_preset`.

- ``fitzpatrick17k``: ``fitzpatrick17k.csv``; file ``<md5hash>.jpg``; label ``label``; group ``fitzpatrick``
  (type 1-6, -1 unknown) or ``tone`` (light / medium / dark).
- ``ham10000``: ``HAM10000_metadata.csv``; file ``<image_id>.jpg``; label ``dx``; groups ``sex`` (+ ``age_group``);
  patient_col ``lesion_id``.
- ``chexpert``: ``train.csv``; file ``Path``; label one finding as 0/1; groups ``sex`` (+ ``age_group``); patient_col
  ``patient_id`` (the ``patientNNNNN`` part of ``Path``).
- ``nih``: ``Data_Entry_2017_v2020.csv``; file ``images/<Image Index>``; label one finding as 0/1; groups ``sex``
  (+ ``age_group``); patient_col ``Patient ID``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fairsample.core.errors import ConfigError, DataError
from fairsample.data.schema import DatasetSpec

_UNKNOWN_PRESET = "`preset` must be one of {allowed}, got {name!r}."
_UNKNOWN_OPTION = "preset {preset!r} has no option {option!r}; its options are {allowed}."
_BAD_OPTION_VALUE = "preset {preset!r} option `{option}` must be one of {allowed}, got {value!r}."
_MISSING_NATIVE_COLUMNS = (
    "preset {preset!r} needs column(s) {missing} that the metadata lacks (columns present: {present}); "
    "point it at the native {native} file, or drop --preset if the folder is already in fairsample layout."
)

#: The 14 CheXpert observation columns, in file order.
CHEXPERT_FINDINGS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
#: The 15 values of NIH ChestX-ray14 ``Finding Labels`` (14 findings + ``No Finding``).
NIH_FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "No Finding",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
)
#: Fitzpatrick skin types grouped into the light / medium / dark tones used by FairSkin and FairGen.
FITZPATRICK_TONES: dict[str, str] = {
    "1": "light",
    "2": "light",
    "3": "medium",
    "4": "medium",
    "5": "dark",
    "6": "dark",
}
#: Age bands of FairDiffusion's HAM10000 prompts ("Age under 60" / "Age equal 60 or older").
AGE_BANDS: tuple[str, str] = ("<60", ">=60")

_Converter = Callable[..., tuple[pd.DataFrame, dict[str, Any]]]


@dataclass(frozen=True)
class Preset:
    """One dataset's native layout and how to map it (see the module table).

    Example:
        >>> PRESETS["ham10000"].native_files
        ('HAM10000_metadata.csv',)
    """

    name: str  # preset name used by --preset
    native_files: tuple[str, ...]  # native metadata file names looked up in the dataset root (also with .gz)
    required_columns: tuple[str, ...]  # native columns the conversion reads
    options: tuple[str, ...]  # keyword options accepted by apply_preset
    description: str  # one line for `fairsample data check --help`
    convert: _Converter  # (native frame, **options) -> (frame, spec fields)


def _prefixed(image_dir: str, names: pd.Series) -> pd.Series:
    """Join an optional image sub-folder and file names with '/'."""
    image_dir = image_dir.strip("/")
    return (image_dir + "/" + names) if image_dir else names


def _age_band(ages: pd.Series) -> pd.Series:
    """'<60' / '>=60' as in FairDiffusion's HAM10000 prompts; blank or non-numeric ages become '' (unknown)."""
    years = pd.to_numeric(ages.str.strip(), errors="coerce")
    band = np.where(years >= 60, AGE_BANDS[1], AGE_BANDS[0])
    return pd.Series(np.where(years.isna(), "", band), index=ages.index, dtype=object)


def _choice(preset: str, option: str, value: Any, allowed: tuple[Any, ...]) -> None:
    """Raise ConfigError unless value is one of allowed."""
    if value not in allowed:
        raise ConfigError(_BAD_OPTION_VALUE.format(preset=preset, option=option, allowed=list(allowed), value=value))


def _fitzpatrick17k(
    frame: pd.DataFrame, *, image_dir: str = "", label: str = "label", grouping: str = "fitzpatrick"
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Fitzpatrick-17k (Groh et al., 2021): one row per image, ``md5hash`` names the file."""
    _choice("fitzpatrick17k", "label", label, ("label", "nine_partition_label", "three_partition_label"))
    _choice("fitzpatrick17k", "grouping", grouping, ("fitzpatrick", "tone"))
    out = frame.copy()
    out["file_name"] = _prefixed(image_dir, out["md5hash"].str.strip() + ".jpg")
    out[grouping] = out["fitzpatrick_scale"].str.strip()
    scale = {str(k): str(k) for k in range(1, 7)}
    fields = {
        "label": label,
        "groups": (grouping,),
        "values": {grouping: FITZPATRICK_TONES if grouping == "tone" else scale},
    }
    return out, fields


def _ham10000(
    frame: pd.DataFrame, *, image_dir: str = "", age_group: bool = False
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """HAM10000 (Tschandl et al., 2018): several images per lesion, so splits are grouped by ``lesion_id``."""
    out = frame.copy()
    out["file_name"] = _prefixed(image_dir, out["image_id"].str.strip() + ".jpg")
    groups: tuple[str, ...] = ("sex",)
    if age_group:
        out["age_group"] = _age_band(out["age"])
        groups += ("age_group",)
    fields = {
        "label": "dx",
        "groups": groups,
        "patient_col": "lesion_id",
        "values": {"sex": {"male": "male", "female": "female"}},
    }
    return out, fields


def _binary_finding(values: pd.Series, uncertain: str) -> pd.Series:
    """CheXpert labeller output -> '0'/'1': 1.0 -> 1, 0.0 and blank -> 0, -1.0 (uncertain) by policy ('drop' -> '')."""
    v = pd.to_numeric(values.str.strip(), errors="coerce")
    out = np.where(v == 1, "1", "0").astype(object)
    out[(v == -1).to_numpy()] = {"zero": "0", "one": "1", "drop": ""}[uncertain]
    return pd.Series(out, index=values.index, dtype=object)


def _chexpert(
    frame: pd.DataFrame,
    *,
    finding: str = "Pleural Effusion",
    uncertain: str = "zero",
    frontal_only: bool = False,
    age_group: bool = False,
    strip_prefix: str = "",
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """CheXpert (Irvin et al., 2019): binary label from one observation column; U-Zeros / U-Ones / drop policy."""
    _choice("chexpert", "finding", finding, CHEXPERT_FINDINGS)
    _choice("chexpert", "uncertain", uncertain, ("zero", "one", "drop"))
    out = frame.copy()
    if frontal_only:
        out = out[out["Frontal/Lateral"].str.strip() == "Frontal"]
    path = out["Path"].str.strip()
    if strip_prefix:
        path = path.str.removeprefix(strip_prefix.rstrip("/") + "/")
    out["file_name"] = path
    out["label"] = _binary_finding(out[finding], uncertain)
    if uncertain == "drop":
        out = out[out["label"] != ""]
    out["sex"] = out["Sex"].str.strip()
    out["patient_id"] = out["Path"].str.extract(r"(patient\d+)", expand=False).fillna("")
    groups: tuple[str, ...] = ("sex",)
    if age_group:
        out["age_group"] = _age_band(out["Age"])
        groups += ("age_group",)
    fields = {
        "label": "label",
        "groups": groups,
        "patient_col": "patient_id",
        "values": {"sex": {"Female": "Female", "Male": "Male"}},
    }
    return out, fields


def _nih(
    frame: pd.DataFrame, *, finding: str = "Effusion", image_dir: str = "images", age_group: bool = False
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """NIH ChestX-ray14 (Wang et al., 2017): binary label = ``finding`` in the '|'-separated ``Finding Labels``."""
    _choice("nih", "finding", finding, NIH_FINDINGS)
    out = frame.copy()
    out["file_name"] = _prefixed(image_dir, out["Image Index"].str.strip())
    has = out["Finding Labels"].str.split("|").apply(lambda labels: finding in [s.strip() for s in labels])
    out["label"] = np.where(has, "1", "0")
    out["sex"] = out["Patient Gender"].str.strip()
    groups: tuple[str, ...] = ("sex",)
    if age_group:
        out["age_group"] = _age_band(out["Patient Age"])
        groups += ("age_group",)
    fields = {
        "label": "label",
        "groups": groups,
        "patient_col": "Patient ID",
        "values": {"sex": {"F": "F", "M": "M"}},
    }
    return out, fields


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="fitzpatrick17k",
            native_files=("fitzpatrick17k.csv",),
            required_columns=("md5hash", "fitzpatrick_scale", "label"),
            options=("image_dir", "label", "grouping"),
            description="Fitzpatrick-17k skin conditions; group = Fitzpatrick type 1-6 (or light/medium/dark tone)",
            convert=_fitzpatrick17k,
        ),
        Preset(
            name="ham10000",
            native_files=("HAM10000_metadata.csv",),
            required_columns=("lesion_id", "image_id", "dx", "sex", "age"),
            options=("image_dir", "age_group"),
            description="HAM10000 dermoscopy; label = dx; groups = sex (+ age <60/>=60); split by lesion_id",
            convert=_ham10000,
        ),
        Preset(
            name="chexpert",
            native_files=("train.csv",),
            required_columns=("Path", "Sex", "Age", "Frontal/Lateral", *CHEXPERT_FINDINGS),
            options=("finding", "uncertain", "frontal_only", "age_group", "strip_prefix"),
            description="CheXpert chest X-rays; label = one finding (0/1); group = sex; split by patient",
            convert=_chexpert,
        ),
        Preset(
            name="nih",
            native_files=("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv"),
            required_columns=("Image Index", "Finding Labels", "Patient ID", "Patient Age", "Patient Gender"),
            options=("finding", "image_dir", "age_group"),
            description="NIH ChestX-ray14; label = one finding (0/1); group = sex (M/F); split by Patient ID",
            convert=_nih,
        ),
    )
}


def get_preset(name: str) -> Preset:
    """The :class:`Preset` called ``name``.

    Raises:
        ConfigError: unknown name (the message lists the presets).

    Example:
        >>> get_preset("chexpert").native_files
        ('train.csv',)
    """
    if name not in PRESETS:
        raise ConfigError(_UNKNOWN_PRESET.format(allowed=sorted(PRESETS), name=name))
    return PRESETS[name]


def preset_fields(frame_native: pd.DataFrame, name: str, options: Mapping[str, Any]) -> tuple[pd.DataFrame, dict]:
    """Like :func:`apply_preset`, but return only the spec fields the preset sets (so specs can be layered).

    Example:
        >>> native = pd.DataFrame({"md5hash": ["ab"], "fitzpatrick_scale": ["2"], "label": ["acne"]})
        >>> frame, fields = preset_fields(native, "fitzpatrick17k", {})
        >>> frame["file_name"].tolist(), fields["groups"], fields["preset"]
        (['ab.jpg'], ('fitzpatrick',), 'fitzpatrick17k')
    """
    preset = get_preset(name)
    for option in options:
        if option not in preset.options:
            raise ConfigError(_UNKNOWN_OPTION.format(preset=name, option=option, allowed=list(preset.options)))
    missing = [c for c in preset.required_columns if c not in frame_native.columns]
    if missing:
        raise DataError(
            _MISSING_NATIVE_COLUMNS.format(
                preset=name, missing=missing, present=list(frame_native.columns), native=preset.native_files[0]
            )
        )
    frame, fields = preset.convert(frame_native, **options)
    fields = {"file_col": "file_name", "preset": name, **fields}
    return frame, fields


def apply_preset(frame_native: pd.DataFrame, name: str, **options: Any) -> tuple[pd.DataFrame, DatasetSpec]:
    """Map a dataset's native metadata table into the fairsample schema.

    Args:
        frame_native: the native table read with every column as ``str`` (``dtype=str, keep_default_na=False``).
        name: a key of :data:`PRESETS`.
        **options: preset options:
            ``fitzpatrick17k``: ``image_dir`` (folder prefix of ``<md5hash>.jpg``, default root), ``label``
            (``label`` | ``nine_partition_label`` | ``three_partition_label``), ``grouping`` (``fitzpatrick``: skin
            type 1-6; ``tone``: 1-2 light, 3-4 medium, 5-6 dark).
            ``ham10000``: ``image_dir``, ``age_group`` (add an ``age_group`` attribute ``<60`` / ``>=60``).
            ``chexpert``: ``finding`` (one of :data:`CHEXPERT_FINDINGS`, default ``"Pleural Effusion"``),
            ``uncertain`` (``zero`` | ``one`` | ``drop``: what -1.0 becomes; blank always becomes 0, positive only when
            the labeller said 1.0), ``frontal_only``, ``age_group``, ``strip_prefix`` (removed from ``Path``, e.g.
            ``"CheXpert-v1.0-small"`` when the root is that folder).
            ``nih``: ``finding`` (one of :data:`NIH_FINDINGS`, default ``"Effusion"``), ``image_dir`` (default
            ``"images"``), ``age_group``.

    Returns:
        ``(frame, spec)``: the native columns plus ``file_name`` and the label/group columns (row index preserved;
        rows may be dropped by ``frontal_only`` / ``uncertain="drop"``), and the spec naming them.

    Raises:
        ConfigError: unknown preset, option or option value.
        DataError: the frame lacks native columns the preset reads.

    Example:
        >>> native = pd.DataFrame({"lesion_id": ["HAM_1"], "image_id": ["ISIC_1"], "dx": ["nv"], "dx_type": ["histo"],
        ...                        "age": ["65.0"], "sex": ["female"], "localization": ["back"]})
        >>> frame, spec = apply_preset(native, "ham10000", age_group=True)
        >>> frame.loc[0, ["file_name", "dx", "sex", "age_group"]].tolist()
        ['ISIC_1.jpg', 'nv', 'female', '>=60']
        >>> spec.groups, spec.patient_col
        (('sex', 'age_group'), 'lesion_id')
    """
    frame, fields = preset_fields(frame_native, name, options)
    return frame, DatasetSpec(**fields)
