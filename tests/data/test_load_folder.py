"""load_folder on a well-formed folder: the FolderDataset API the training loop and pipeline code against."""

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fairsample.data import CellKey, DatasetSpec, FolderDataset, load_folder

TOML = 'groups = ["tone"]\nmin_group_size = 0\n'


def test_frame_rows_and_string_columns(make_folder, small_rows):
    root = make_folder(small_rows, toml=TOML)
    ds = load_folder(root)
    assert isinstance(ds, FolderDataset)
    assert len(ds) == 6
    assert ds.root == root
    assert ds.spec == DatasetSpec(groups=("tone",), min_group_size=0)
    assert list(ds.frame.index) == list(range(6))
    assert ds.frame["label"].tolist() == ["2", "2", "10", "10", "2", "10"]
    assert all(isinstance(v, str) for col in ds.frame.columns for v in ds.frame[col])
    assert ds.warnings == []


def test_cells_sorted_numeric_aware(make_folder, small_rows):
    ds = load_folder(make_folder(small_rows, toml=TOML))
    assert [str(c) for c in ds.cells()] == [
        "tone=dark,label=2",
        "tone=dark,label=10",
        "tone=light,label=2",
        "tone=light,label=10",
    ]
    assert ds.label_values() == ["2", "10"]
    assert ds.attribute_values() == {"tone": ["dark", "light"]}


def test_cell_of_and_cell_ids(make_folder, small_rows):
    ds = load_folder(make_folder(small_rows, toml=TOML))
    ids = ds.cell_ids()
    assert len(ids) == 6
    assert ids[0] == CellKey((("tone", "light"),), "2") == ds.cell_of(0)
    assert ds.cell_of(5) == CellKey((("tone", "dark"),), "10")
    assert ids[0] is ids[1]  # one shared key object per cell


def test_image_path_and_load_image(make_folder, small_rows):
    root = make_folder(small_rows, toml=TOML)
    ds = load_folder(root)
    assert ds.image_path(3) == root / "images/00003.png"
    im = ds.load_image(0)
    assert isinstance(im, Image.Image) and im.mode == "RGB" and im.size == (6, 4)
    assert ds.load_image(0, size=8).size == (8, 8)
    assert ds.load_image(0, size=(10, 3)).size == (10, 3)
    assert ds.load_image(1).getpixel((0, 0)) == (30, 200, 30)


def test_load_image_converts_grayscale_to_rgb(make_folder, png):
    rows = [{"file_name": "g.png", "label": "1", "sex": "F"}, {"file_name": "h.png", "label": "0", "sex": "F"}]
    root = make_folder(rows, toml=TOML.replace("tone", "sex"), images=False)
    Image.new("L", (5, 5), 77).save(root / "g.png")
    png(root / "h.png")
    im = load_folder(root).load_image(0)
    assert im.mode == "RGB" and im.getpixel((2, 2)) == (77, 77, 77)


def test_subset_reindexes_and_keeps_cells(make_folder, small_rows):
    ds = load_folder(make_folder(small_rows, toml=TOML))
    ds.cell_ids()
    sub = ds.subset([5, 0])
    assert len(sub) == 2
    assert list(sub.frame.index) == [0, 1]
    assert sub.frame["file_name"].tolist() == ["images/00005.png", "images/00000.png"]
    assert [str(c) for c in sub.cell_ids()] == ["tone=dark,label=10", "tone=light,label=2"]
    mask = np.array([True, False, False, False, True, False])
    assert sub.spec is ds.spec and len(ds.subset(mask)) == 2
    assert ds.subset(mask).frame["label"].tolist() == ["2", "2"]


def test_direct_construction_resets_index():
    frame = pd.DataFrame({"file_name": ["a.png", "b.png"], "label": ["1", "0"], "sex": ["F", "M"]}, index=[7, 9])
    ds = FolderDataset(Path("/x"), DatasetSpec(groups=("sex",)), frame)
    assert list(ds.frame.index) == [0, 1]
    assert ds.image_path(1) == Path("/x/b.png")


def test_integer_like_values_stay_text(make_folder):
    rows = [{"file_name": f"{i}.png", "label": v, "site": "01", "sex": "F"} for i, v in enumerate(["1", "0", "1.0"])]
    ds = load_folder(make_folder(rows, toml='groups = ["sex"]\nmin_group_size = 0\n'))
    assert ds.frame["label"].tolist() == ["1", "0", "1.0"]
    assert ds.frame["site"].tolist() == ["01", "01", "01"]


def test_whitespace_around_values_is_stripped(make_folder):
    rows = [{"file_name": "a.png", "label": " 1 ", "sex": " F"}, {"file_name": "b.png", "label": "0", "sex": "F "}]
    root = make_folder(rows, toml='groups = ["sex"]\nmin_group_size = 0\n', images=False)
    for name in ("a.png", "b.png"):
        Image.new("RGB", (2, 2)).save(root / name)
    ds = load_folder(root)
    assert ds.attribute_values() == {"sex": ["F"]}
    assert ds.label_values() == ["0", "1"]


@pytest.mark.parametrize("size", [0, -3, (4,), (4, 0), 2.5])
def test_load_image_rejects_bad_size(make_folder, small_rows, size):
    from fairsample.core.errors import ConfigError
    from fairsample.data.folder import _BAD_SIZE

    ds = load_folder(make_folder(small_rows, toml=TOML))
    with pytest.raises(ConfigError, match=re.escape(_BAD_SIZE.format(value=size))):
        ds.load_image(0, size=size)
