"""Missing file_name / label / group / id columns, and no groups at all: errors list the columns present."""

import re

import pytest

from fairsample.core.errors import DataError
from fairsample.data import load_folder
from fairsample.data.validate import _MISSING_COLUMN, _MISSING_FILE_COL, _NO_GROUPS

ROWS = [{"path": "a.png", "label": "1", "sex": "F", "site": "A"}]
PRESENT = ["path", "label", "sex", "site"]


def test_missing_file_name_column_lists_columns(make_folder):
    root = make_folder(ROWS, images=False)
    msg = _MISSING_FILE_COL.format(file="metadata.csv", column="file_name", present=PRESENT)
    with pytest.raises(DataError, match=re.escape(msg)):
        load_folder(root, group_cols=["sex"])


def test_missing_label_column_suggests_flag(make_folder):
    rows = [{"file_name": "a.png", "dx": "1", "sex": "F"}]
    root = make_folder(rows)
    fix = "pass --label-col COLUMN or set `label` in fairsample.toml"
    msg = _MISSING_COLUMN.format(
        file="metadata.csv", role="label", column="label", present=["file_name", "dx", "sex"], fix=fix
    )
    with pytest.raises(DataError, match=re.escape(msg)):
        load_folder(root, group_cols=["sex"])


def test_missing_group_column_suggests_flag(make_folder):
    root = make_folder([{"file_name": "a.png", "label": "1", "sex": "F"}])
    fix = "pass --group-col COLUMN or fix `groups` in fairsample.toml"
    msg = _MISSING_COLUMN.format(
        file="metadata.csv", role="group", column="race", present=["file_name", "label", "sex"], fix=fix
    )
    with pytest.raises(DataError, match=re.escape(msg)):
        load_folder(root, group_cols=["sex", "race"])


def test_missing_patient_column(make_folder):
    root = make_folder(
        [{"file_name": "a.png", "label": "1", "sex": "F"}], toml='groups = ["sex"]\npatient_col = "pid"\n'
    )
    with pytest.raises(DataError, match=r"has no patient id column 'pid' \(columns present: \['file_name'"):
        load_folder(root)


def test_no_groups_names_candidate_columns(make_folder):
    root = make_folder([{"file_name": "a.png", "label": "1", "sex": "F", "age": "40"}])
    msg = _NO_GROUPS.format(root=root, file="metadata.csv", candidates=["sex", "age"])
    with pytest.raises(DataError, match=re.escape(msg)):
        load_folder(root)


def test_label_col_flag_selects_another_column(make_folder):
    rows = [{"file_name": "a.png", "dx": "mel", "sex": "F"}, {"file_name": "b.png", "dx": "nv", "sex": "F"}]
    ds = load_folder(make_folder(rows, toml="min_group_size = 0\n"), label_col="dx", group_cols="sex")
    assert ds.spec.label == "dx" and ds.spec.groups == ("sex",)
    assert ds.label_values() == ["mel", "nv"]
