"""file_name checks: missing files (count + first), blank, absolute and root-escaping paths."""

import re

import pytest

from fairsample.core.errors import DataError
from fairsample.data import load_folder
from fairsample.data.validate import _BLANK_FILE, _MISSING_FILES, _UNSAFE_PATH

TOML = 'groups = ["tone"]\nmin_group_size = 0\n'


def test_missing_files_counted_with_first(make_folder, tone_rows):
    rows = tone_rows({("dark", "0"): 10, ("dark", "1"): 10})
    missing = ["images/00003.png", "images/00004.png", "images/00017.png"]
    root = make_folder(rows, toml=TOML, skip=missing)
    msg = _MISSING_FILES.format(rows="3 rows", file="metadata.csv", have="have", value=missing[0], column="file_name")
    with pytest.raises(DataError, match=re.escape(msg)):
        load_folder(root)
    assert msg.startswith("3 rows in metadata.csv have no matching file (first: images/00003.png)")


def test_single_missing_file_grammar(make_folder, tone_rows):
    root = make_folder(tone_rows({("dark", "0"): 2, ("dark", "1"): 2}), toml=TOML, skip=["images/00001.png"])
    with pytest.raises(
        DataError, match=re.escape("1 row in metadata.csv has no matching file (first: images/00001.png)")
    ):
        load_folder(root)


def test_check_files_false_skips_existence(make_folder, tone_rows):
    root = make_folder(tone_rows({("dark", "0"): 2, ("dark", "1"): 2}), toml=TOML, images=False)
    assert len(load_folder(root, check_files=False)) == 4


@pytest.mark.parametrize(
    "bad", ["/etc/passwd", "../outside.png", "images/../../outside.png", "C:\\x.png", "\\\\srv\\a"]
)
def test_unsafe_paths_are_refused(make_folder, tone_rows, bad):
    rows = tone_rows({("dark", "0"): 2, ("dark", "1"): 2})
    rows[1]["file_name"] = bad
    root = make_folder(rows, toml=TOML)
    msg = _UNSAFE_PATH.format(
        rows="1 row", file="metadata.csv", have="has", column="file_name", row=2, value=bad, root=root
    )
    with pytest.raises(DataError, match=re.escape(msg)):
        load_folder(root, check_files=False)


def test_dotdot_is_refused_even_inside_root(make_folder, tone_rows):
    rows = tone_rows({("dark", "0"): 2, ("dark", "1"): 2})
    rows[0]["file_name"] = "images/sub/../00000.png"
    root = make_folder(rows, toml=TOML)
    with pytest.raises(DataError, match=re.escape("contains '..' (first: row 1, 'images/sub/../00000.png')")):
        load_folder(root)


def test_dots_in_names_are_fine(make_folder, tone_rows):
    rows = tone_rows({("dark", "0"): 2, ("dark", "1"): 2})
    rows[0]["file_name"] = "images/..a..png"
    root = make_folder(rows, toml=TOML, images=False)
    assert load_folder(root, check_files=False).frame["file_name"][0] == "images/..a..png"


def test_blank_file_name(make_folder, tone_rows):
    rows = tone_rows({("dark", "0"): 2, ("dark", "1"): 2})
    rows[2]["file_name"] = "  "
    root = make_folder(rows, toml=TOML)
    msg = _BLANK_FILE.format(rows="1 row", file="metadata.csv", have="has", column="file_name", row=3)
    with pytest.raises(DataError, match=re.escape(msg)):
        load_folder(root, check_files=False)
