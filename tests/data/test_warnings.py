"""Soft validation: small groups and single-label groups warn (FairsampleWarning) and are recorded in ds.warnings."""

import re

import pytest

from fairsample.core.errors import FairsampleWarning
from fairsample.data import load_folder
from fairsample.data.validate import _SINGLE_LABEL, _SMALL_GROUP


def test_small_group_warns(make_folder, tone_rows):
    rows = tone_rows({("light", "0"): 12, ("light", "1"): 12, ("dark", "0"): 2, ("dark", "1"): 1})
    root = make_folder(rows, toml='groups = ["tone"]\n')
    msg = _SMALL_GROUP.format(group="tone=dark", count=3, min_size=20)
    assert msg == "group tone=dark has 3 images (< min_group_size=20)"
    with pytest.warns(FairsampleWarning, match=re.escape(msg)) as record:
        ds = load_folder(root)
    assert ds.warnings == [msg]
    assert len(record) == 1


def test_single_label_group_warns(make_folder, tone_rows):
    rows = tone_rows({("F", "0"): 4, ("M", "0"): 2, ("M", "1"): 2})
    root = make_folder(rows, toml='groups = ["sex"]\nmin_group_size = 0\n'.replace("sex", "tone"))
    msg = _SINGLE_LABEL.format(group="tone=F", label="0")
    assert msg == "group tone=F has only label 0: AUC is undefined and will be reported as NaN"
    with pytest.warns(FairsampleWarning, match=re.escape(msg)):
        ds = load_folder(root)
    assert ds.warnings == [msg]


def test_min_group_size_flag_order_and_both_kinds(make_folder, tone_rows):
    rows = tone_rows({("a", "0"): 1, ("b", "0"): 5, ("b", "1"): 5})
    root = make_folder(rows, toml='groups = ["tone"]\nmin_group_size = 11\n')
    with pytest.warns(FairsampleWarning) as record:
        ds = load_folder(root)
    expected = [
        "group tone=a has 1 images (< min_group_size=11)",
        "group tone=a has only label 0: AUC is undefined and will be reported as NaN",
        "group tone=b has 10 images (< min_group_size=11)",
    ]
    assert ds.warnings == expected
    assert [str(w.message) for w in record] == expected


def test_no_warnings_when_validation_off(make_folder, tone_rows):
    rows = tone_rows({("a", "0"): 1})
    ds = load_folder(make_folder(rows, toml='groups = ["tone"]\n'), validate=False)
    assert ds.warnings == []
