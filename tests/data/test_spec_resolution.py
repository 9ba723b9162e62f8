"""Spec resolution: defaults < fairsample.toml < preset < explicit spec < flags; bad toml fails naming the file."""

import re

import pytest

from fairsample.core.errors import ConfigError, DataError
from fairsample.data import DatasetSpec, load_folder
from fairsample.data.folder import _BAD_SPEC_TYPE, _BAD_TOML, _OPTIONS_WITHOUT_PRESET


@pytest.fixture
def rows():
    return [
        {"file_name": f"{i}.png", "label": str(i % 2), "dx": ["a", "b"][i // 2 % 2], "sex": "FM"[i // 4], "race": "x"}
        for i in range(8)
    ]


def test_toml_gives_groups_and_settings(make_folder, rows):
    root = make_folder(rows, toml='label = "dx"\ngroups = ["sex"]\nmin_group_size = 0\npatient_col = "race"\n')
    spec = load_folder(root).spec
    assert (spec.label, spec.groups, spec.min_group_size, spec.patient_col) == ("dx", ("sex",), 0, "race")


def test_flags_override_toml(make_folder, rows):
    root = make_folder(rows, toml='label = "dx"\ngroups = ["sex"]\nmin_group_size = 0\n')
    spec = load_folder(root, label_col="label", group_cols=["race", "sex"]).spec
    assert (spec.label, spec.groups, spec.min_group_size) == ("label", ("race", "sex"), 0)


def test_patient_col_flag_overrides_toml(make_folder, rows):
    root = make_folder(rows, toml='label = "dx"\ngroups = ["sex"]\nmin_group_size = 0\npatient_col = "race"\n')
    assert load_folder(root, patient_col="label").spec.patient_col == "label"
    assert load_folder(root).spec.patient_col == "race"


def test_explicit_spec_replaces_toml(make_folder, rows):
    root = make_folder(rows, toml='label = "dx"\ngroups = ["sex"]\nmin_group_size = 99\n')
    ds = load_folder(root, spec=DatasetSpec(groups=("race",), min_group_size=0))
    assert (ds.spec.label, ds.spec.groups, ds.spec.min_group_size) == ("label", ("race",), 0)


def test_flags_override_explicit_spec(make_folder, rows):
    root = make_folder(rows)
    ds = load_folder(root, spec=DatasetSpec(groups=("race",), min_group_size=0), group_cols=["sex"])
    assert ds.spec.groups == ("sex",)


def test_invalid_toml_names_file(make_folder, rows):
    root = make_folder(rows, toml="groups = [sex\n")
    head = re.escape(_BAD_TOML.format(file=root / "fairsample.toml", detail="\0").split("\0")[0])
    with pytest.raises(DataError, match=head):
        load_folder(root)


def test_toml_unknown_setting(make_folder, rows):
    root = make_folder(rows, toml='groups = ["sex"]\nmin_size = 3\n')
    with pytest.raises(DataError, match=re.escape("fairsample.toml: unknown dataset setting(s) ['min_size']")):
        load_folder(root)


@pytest.mark.parametrize(
    ("line", "key", "expected", "value"),
    [
        ('label = ["dx", "label"]', "label", "one column name (a string)", ["dx", "label"]),
        ("groups = [1]", "groups", "a list of column names", [1]),
        ('min_group_size = "5"', "min_group_size", "an integer >= 0", "5"),
    ],
)
def test_toml_wrong_types(make_folder, rows, line, key, expected, value):
    root = make_folder(rows, toml=line + "\n")
    msg = _BAD_SPEC_TYPE.format(source=root / "fairsample.toml", key=key, expected=expected, value=value)
    with pytest.raises(DataError, match=re.escape(msg)):
        load_folder(root)


def test_preset_options_need_preset(make_folder, rows):
    root = make_folder(rows, toml='groups = ["sex"]\n')
    with pytest.raises(ConfigError, match=re.escape(_OPTIONS_WITHOUT_PRESET.format(options={"age_group": True}))):
        load_folder(root, preset_options={"age_group": True})
