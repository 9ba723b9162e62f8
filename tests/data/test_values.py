"""Row values: unknown group values (error or --drop-unknown), value maps, blank labels, repeated files."""

import re

import pytest

from fairsample.core.errors import DataError, FairsampleWarning
from fairsample.data import load_folder, split_indices
from fairsample.data.validate import _BLANK_LABEL, _DROPPED_UNKNOWN, _DUPLICATE_FILE, _NOT_IN_VALUES, _UNKNOWN_VALUE

TOML = 'groups = ["tone"]\nmin_group_size = 0\n'


@pytest.fixture
def rows_with_unknowns(tone_rows):
    rows = tone_rows({("dark", "0"): 5, ("dark", "1"): 5, ("light", "0"): 5, ("light", "1"): 10})
    for k, value in [(16, "-1"), (17, "Unknown"), (20, "")]:
        rows[k]["tone"] = value
    return rows


def test_unknown_values_are_an_error(make_folder, rows_with_unknowns):
    root = make_folder(rows_with_unknowns, toml=TOML)
    msg = _UNKNOWN_VALUE.format(rows="3 rows", file="metadata.csv", have="have", column="tone", row=17, value="-1")
    with pytest.raises(DataError, match=re.escape(msg)):
        load_folder(root)
    assert msg.startswith(
        "3 rows in metadata.csv have an unknown tone value (first: row 17, '-1'); fix the values, or"
    )


def test_drop_unknown_drops_and_warns(make_folder, rows_with_unknowns):
    root = make_folder(rows_with_unknowns, toml=TOML)
    msg = _DROPPED_UNKNOWN.format(rows="3 rows", columns="tone", remaining=22)
    with pytest.warns(FairsampleWarning, match=re.escape(msg)):
        ds = load_folder(root, drop_unknown=True)
    assert len(ds) == 22
    assert ds.warnings == [msg]
    assert ds.attribute_values() == {"tone": ["dark", "light"]}
    assert "images/00016.png" not in set(ds.frame["file_name"])
    assert list(ds.frame.index) == list(range(22))


def test_drop_unknown_from_toml(make_folder, rows_with_unknowns):
    root = make_folder(rows_with_unknowns, toml=TOML + "drop_unknown = true\n")
    with pytest.warns(FairsampleWarning, match="dropped 3 rows"):
        assert len(load_folder(root)) == 22


def test_custom_unknown_tokens(make_folder, tone_rows):
    rows = tone_rows({("dark", "0"): 2, ("dark", "1"): 2, ("?", "1"): 1})
    root = make_folder(rows, toml=TOML + 'unknown = ["?"]\n')
    with pytest.raises(
        DataError, match=re.escape("1 row in metadata.csv has an unknown tone value (first: row 5, '?')")
    ):
        load_folder(root)


VALUES_TOML = 'groups = ["race"]\nmin_group_size = 0\n[values.race]\n0 = "Asian"\n1 = "Black"\n2 = "White"\n'


def _race_rows(values):
    return [{"file_name": f"{i}.png", "label": str(i // 3), "race": v} for i, v in enumerate(values)]


def test_value_map_is_applied(make_folder):
    root = make_folder(_race_rows(["0", "1", "2", "1", "Asian", "2"]), toml=VALUES_TOML)
    ds = load_folder(root)
    assert ds.frame["race"].tolist() == ["Asian", "Black", "White", "Black", "Asian", "White"]
    assert ds.attribute_values() == {"race": ["Asian", "Black", "White"]}


def test_value_outside_map_lists_allowed(make_folder):
    root = make_folder(_race_rows(["0", "1", "3", "1", "7", "0"]), toml=VALUES_TOML)
    allowed = ["0", "1", "2", "Asian", "Black", "White"]
    msg = _NOT_IN_VALUES.format(
        rows="2 rows", file="metadata.csv", have="have", column="race", row=3, value="3", allowed=allowed
    )
    with pytest.raises(DataError, match=re.escape(msg)):
        load_folder(root)


def test_blank_labels_are_an_error(make_folder, tone_rows):
    rows = tone_rows({("dark", "0"): 3, ("dark", "1"): 3})
    rows[4]["label"] = ""
    root = make_folder(rows, toml=TOML)
    msg = _BLANK_LABEL.format(rows="1 row", file="metadata.csv", have="has", column="label", row=5)
    with pytest.raises(DataError, match=re.escape(msg)):
        load_folder(root)


def test_repeated_file_is_an_error(make_folder, tone_rows):
    rows = tone_rows({("dark", "0"): 3, ("dark", "1"): 3})
    rows[5]["file_name"] = rows[0]["file_name"]
    root = make_folder(rows, toml=TOML)
    msg = _DUPLICATE_FILE.format(
        rows="1 row", file="metadata.csv", column="file_name", row=6, value="images/00000.png"
    )
    with pytest.raises(DataError, match=re.escape(msg)):
        load_folder(root)


def test_validate_false_skips_row_checks(make_folder, tone_rows):
    rows = tone_rows({("dark", "0"): 3, ("dark", "1"): 3})
    rows[4]["label"] = ""
    rows[1]["tone"] = "-1"
    ds = load_folder(make_folder(rows, toml=TOML), validate=False)
    assert len(ds) == 6 and ds.warnings == []


def test_split_column_values_checked_on_load(make_folder, tone_rows):
    rows = tone_rows({("dark", "0"): 2, ("dark", "1"): 2})
    for r, split in zip(rows, ["train", "Validation", "TEST", "holdout"], strict=True):
        r["split"] = split
    root = make_folder(rows, toml=TOML + 'split = "split"\n')
    with pytest.raises(DataError, match=re.escape("1 row in metadata.csv has a split value that is not a split name")):
        load_folder(root)
    rows[3]["split"] = "train"
    ds = load_folder(make_folder(rows, name="ok", toml=TOML + 'split = "split"\n'))
    assert {k: v.tolist() for k, v in split_indices(ds).items()} == {"train": [0, 3], "val": [1], "test": [2]}
