"""Finding and parsing metadata.csv / metadata.jsonl: hard errors name the file (and line) and say the fix."""

import re

import pytest

from fairsample.core.errors import DataError
from fairsample.data import find_metadata, load_folder, read_metadata
from fairsample.data.folder import _BAD_CSV, _BAD_JSONL, _EMPTY, _NO_METADATA, _NOT_A_DIR, _NOT_UTF8, _TWO_METADATA

TOML = 'groups = ["tone"]\nmin_group_size = 0\n'


def test_jsonl_is_read_with_literal_number_text(make_folder):
    rows = [
        {"file_name": "a.png", "label": 1, "tone": "dark", "score": 0.50, "note": None},
        {"file_name": "b.png", "label": 10, "tone": "dark", "flag": True},
    ]
    root = make_folder(rows, metadata="metadata.jsonl", toml=TOML)
    ds = load_folder(root)
    assert ds.frame["label"].tolist() == ["1", "10"]
    assert ds.frame["score"].tolist() == ["0.5", ""]
    assert ds.frame["note"].tolist() == ["", ""]
    assert ds.frame["flag"].tolist() == ["", "true"]


def test_jsonl_bad_line_names_file_and_line(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    (root / "metadata.jsonl").write_text('{"file_name": "a.png"}\n\n{"file_name": "b.png",\n', encoding="utf-8")
    msg = _BAD_JSONL.format(file="metadata.jsonl", line=3, detail="Expecting property name enclosed in double quotes")
    with pytest.raises(DataError, match=re.escape(msg)):
        load_folder(root, group_cols=["x"])


def test_jsonl_line_that_is_not_an_object(tmp_path):
    (tmp_path / "metadata.jsonl").write_text('["a.png", 1]\n', encoding="utf-8")
    with pytest.raises(
        DataError, match=re.escape(_BAD_JSONL.format(file="metadata.jsonl", line=1, detail="got list"))
    ):
        read_metadata(tmp_path / "metadata.jsonl")


def test_malformed_csv_names_the_line(tmp_path):
    (tmp_path / "metadata.csv").write_text("file_name,label\na.png,1\nb.png,1,extra\n", encoding="utf-8")
    msg = _BAD_CSV.format(file="metadata.csv", detail="Expected 2 fields in line 3, saw 3")
    with pytest.raises(DataError, match=re.escape(msg)):
        read_metadata(tmp_path / "metadata.csv")


def test_non_utf8_csv(tmp_path):
    (tmp_path / "metadata.csv").write_bytes(b"file_name,label\n\xff\xfe.png,1\n")
    head, tail = _NOT_UTF8.format(file="metadata.csv", detail="\0").split("\0")
    with pytest.raises(DataError, match=re.escape(head) + ".*invalid start byte.*" + re.escape(tail)):
        read_metadata(tmp_path / "metadata.csv")


@pytest.mark.parametrize("text", ["", "file_name,label,tone\n"])
def test_empty_metadata(tmp_path, text):
    (tmp_path / "metadata.csv").write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(_EMPTY.format(file="metadata.csv"))):
        load_folder(tmp_path)


def test_no_metadata_file(tmp_path):
    msg = _NO_METADATA.format(root=tmp_path, names=["metadata.csv", "metadata.jsonl"])
    with pytest.raises(DataError, match=re.escape(msg)):
        load_folder(tmp_path)


def test_no_metadata_lists_preset_native_names(tmp_path):
    names = ["fitzpatrick17k.csv", "fitzpatrick17k.csv.gz", "metadata.csv", "metadata.jsonl"]
    with pytest.raises(DataError, match=re.escape(_NO_METADATA.format(root=tmp_path, names=names))):
        find_metadata(tmp_path, preset="fitzpatrick17k")


def test_both_metadata_files_is_an_error(tmp_path):
    (tmp_path / "metadata.csv").write_text("file_name\n", encoding="utf-8")
    (tmp_path / "metadata.jsonl").write_text("{}\n", encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(_TWO_METADATA.format(root=tmp_path))):
        load_folder(tmp_path)


def test_root_must_be_a_directory(tmp_path):
    with pytest.raises(DataError, match=re.escape(_NOT_A_DIR.format(root=tmp_path / "nope"))):
        load_folder(tmp_path / "nope")


def test_utf8_bom_is_ignored(tmp_path, png):
    (tmp_path / "metadata.csv").write_bytes("\ufefffile_name,label,tone\na.png,1,x\nb.png,0,x\n".encode())
    png(tmp_path / "a.png")
    png(tmp_path / "b.png")
    (tmp_path / "fairsample.toml").write_text(TOML, encoding="utf-8")
    assert list(load_folder(tmp_path).frame.columns) == ["file_name", "label", "tone"]
