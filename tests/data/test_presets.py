"""Presets on tiny native tables with the real column layouts (STYLE.md §6.3), through load_folder and apply_preset."""

import re

import numpy as np
import pandas as pd
import pytest

from fairsample.core.errors import ConfigError, DataError, FairsampleWarning
from fairsample.data import PRESETS, apply_preset, load_folder, split_indices
from fairsample.data.presets import _BAD_OPTION_VALUE, _MISSING_NATIVE_COLUMNS, _UNKNOWN_OPTION, _UNKNOWN_PRESET
from fairsample.data.validate import _NOT_IN_VALUES

FITZ_COLUMNS = [
    "md5hash",
    "fitzpatrick_scale",
    "fitzpatrick_centaur",
    "label",
    "nine_partition_label",
    "three_partition_label",
    "qc",
    "url",
    "url_alphanum",
]
HAM_COLUMNS = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]


def fitz_rows(scales):
    return [
        dict(
            zip(
                FITZ_COLUMNS,
                [
                    f"{k:032x}",
                    s,
                    s,
                    ["psoriasis", "acne"][k % 2],
                    "inflammatory",
                    "non-neoplastic",
                    "",
                    f"https://x/{k}.jpg",
                    f"x{k}jpg",
                ],
                strict=True,
            )
        )
        for k, s in enumerate(scales)
    ]


def test_presets_registry():
    assert set(PRESETS) == {"fitzpatrick17k", "ham10000", "chexpert", "nih"}
    assert PRESETS["fitzpatrick17k"].native_files == ("fitzpatrick17k.csv",)


def test_fitzpatrick17k_folder(make_folder, png):
    scales = ["1", "2", "2", "3", "5", "6", "6", "-1"]
    root = make_folder(fitz_rows(scales), metadata="fitzpatrick17k.csv", images=False)
    for k in range(len(scales)):
        png(root / "images" / f"{k:032x}.jpg".replace(".jpg", ".jpg"))
    with pytest.warns(FairsampleWarning) as record:
        ds = load_folder(root, preset="fitzpatrick17k", preset_options={"image_dir": "images"}, drop_unknown=True)
    assert (
        str(record[0].message)
        == "dropped 1 row with an unknown fitzpatrick value (drop_unknown is set); 7 rows remain"
    )
    assert ds.spec.groups == ("fitzpatrick",) and ds.spec.label == "label" and ds.spec.preset == "fitzpatrick17k"
    assert ds.frame["file_name"][0] == f"images/{0:032x}.jpg"
    assert ds.attribute_values() == {"fitzpatrick": ["1", "2", "3", "5", "6"]}
    assert list(ds.frame.columns[: len(FITZ_COLUMNS)]) == FITZ_COLUMNS
    assert ds.load_image(0).mode == "RGB"


def test_fitzpatrick17k_unknown_is_an_error_by_default(make_folder):
    root = make_folder(fitz_rows(["1", "-1", "2"]), metadata="fitzpatrick17k.csv", images=False)
    msg = "1 row in fitzpatrick17k.csv has an unknown fitzpatrick value (first: row 2, '-1')"
    with pytest.raises(DataError, match=re.escape(msg)):
        load_folder(root, preset="fitzpatrick17k", check_files=False)


def test_fitzpatrick17k_rejects_out_of_range_type(make_folder):
    root = make_folder(fitz_rows(["1", "7", "2"]), metadata="fitzpatrick17k.csv", images=False)
    allowed = ["1", "2", "3", "4", "5", "6"]
    msg = _NOT_IN_VALUES.format(
        rows="1 row", file="fitzpatrick17k.csv", have="has", column="fitzpatrick", row=2, value="7", allowed=allowed
    )
    with pytest.raises(DataError, match=re.escape(msg)):
        load_folder(root, preset="fitzpatrick17k", check_files=False)


def test_fitzpatrick17k_tone_grouping():
    frame, spec = apply_preset(
        pd.DataFrame(fitz_rows(["1", "2", "3", "4", "5", "6"])),
        "fitzpatrick17k",
        grouping="tone",
        label="three_partition_label",
    )
    assert spec.groups == ("tone",) and spec.label == "three_partition_label"
    assert [spec.values["tone"][v] for v in frame["tone"]] == ["light", "light", "medium", "medium", "dark", "dark"]


def test_ham10000_age_group_and_lesion_split(make_folder):
    rows = []
    for k in range(40):
        age = ["", "35.0", "59.0", "60.0", "85.0"][k % 5]
        rows.append(
            dict(
                zip(
                    HAM_COLUMNS,
                    [
                        f"HAM_{k // 2:07d}",
                        f"ISIC_{k:07d}",
                        ["nv", "mel"][k // 2 % 2],
                        "histo",
                        age,
                        ["male", "female"][k // 4 % 2],
                        "back",
                    ],
                    strict=True,
                )
            )
        )
    root = make_folder(rows, metadata="HAM10000_metadata.csv", images=False, toml="min_group_size = 0\n")
    with pytest.warns(FairsampleWarning, match=re.escape("dropped 8 rows with an unknown age_group value")):
        ds = load_folder(
            root, preset="ham10000", preset_options={"age_group": True}, drop_unknown=True, check_files=False
        )
    assert ds.spec.groups == ("sex", "age_group") and ds.spec.label == "dx" and ds.spec.patient_col == "lesion_id"
    assert ds.spec.min_group_size == 0  # from fairsample.toml: the preset only sets what it knows
    assert ds.frame["file_name"][0] == "ISIC_0000001.jpg"
    assert ds.frame["age_group"][:4].tolist() == ["<60", "<60", ">=60", ">=60"]
    parts = split_indices(ds, seed=0)
    lesions = ds.frame["lesion_id"].to_numpy()
    assert not set(lesions[parts["train"]]) & (set(lesions[parts["val"]]) | set(lesions[parts["test"]]))


def test_ham10000_bad_sex_value(make_folder):
    rows = [
        dict(zip(HAM_COLUMNS, ["H", f"I{k}", "nv", "histo", "50.0", sex, "back"], strict=True))
        for k, sex in enumerate(["male", "female", "M"])
    ]
    root = make_folder(rows, metadata="HAM10000_metadata.csv", images=False)
    with pytest.raises(DataError, match=re.escape("(first: row 3, 'M'); allowed values are ['female', 'male']")):
        load_folder(root, preset="ham10000", check_files=False)


def test_unknown_preset():
    with pytest.raises(ConfigError, match=re.escape(_UNKNOWN_PRESET.format(allowed=sorted(PRESETS), name="isic"))):
        apply_preset(pd.DataFrame({"a": ["1"]}), "isic")


def test_unknown_option():
    allowed = ["image_dir", "age_group"]
    msg = _UNKNOWN_OPTION.format(preset="ham10000", option="finding", allowed=allowed)
    with pytest.raises(ConfigError, match=re.escape(msg)):
        apply_preset(pd.DataFrame(columns=HAM_COLUMNS), "ham10000", finding="x")


def test_bad_option_value():
    msg = _BAD_OPTION_VALUE.format(
        preset="chexpert", option="uncertain", allowed=["zero", "one", "drop"], value="half"
    )
    with pytest.raises(ConfigError, match=re.escape(msg)):
        apply_preset(pd.DataFrame(columns=list(PRESETS["chexpert"].required_columns)), "chexpert", uncertain="half")


def test_missing_native_columns(make_folder):
    root = make_folder([{"file_name": "a.png", "label": "1", "sex": "F"}], metadata="fitzpatrick17k.csv")
    msg = _MISSING_NATIVE_COLUMNS.format(
        preset="fitzpatrick17k",
        missing=["md5hash", "fitzpatrick_scale"],
        present=["file_name", "label", "sex"],
        native="fitzpatrick17k.csv",
    )
    with pytest.raises(DataError, match=re.escape(msg)):
        load_folder(root, preset="fitzpatrick17k")


def test_chexpert_uncertainty_policies():
    native = pd.DataFrame(columns=list(PRESETS["chexpert"].required_columns))
    native["Pleural Effusion"] = ["1.0", "0.0", "-1.0", ""]
    native["Path"] = [f"CheXpert-v1.0-small/train/patient{k:05d}/study1/view1_frontal.jpg" for k in (1, 1, 2, 3)]
    native = native.fillna("")
    expected = {"zero": ["1", "0", "0", "0"], "one": ["1", "0", "1", "0"], "drop": ["1", "0", "0"]}
    for policy, labels in expected.items():
        frame, spec = apply_preset(native, "chexpert", uncertain=policy, strip_prefix="CheXpert-v1.0-small")
        assert frame["label"].tolist() == labels, policy
    assert frame["patient_id"].tolist() == ["patient00001", "patient00001", "patient00003"]
    assert frame["file_name"][0] == "train/patient00001/study1/view1_frontal.jpg"
    assert np.array_equal(frame.index, [0, 1, 3])  # source rows are kept for messages
    assert spec.patient_col == "patient_id" and spec.label == "label" and spec.groups == ("sex",)
