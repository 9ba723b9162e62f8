"""write_metadata: atomic metadata.csv + fairsample.toml that load_folder reads back without flags."""

import re

import pandas as pd
import pytest

from fairsample.core.errors import DataError
from fairsample.data import DatasetSpec, load_folder, spec_to_toml, write_metadata
from fairsample.data.folder import _METADATA_EXISTS, _WRITE_MISSING_COLUMNS


@pytest.fixture
def frame():
    return pd.DataFrame(
        {
            "seed": ["0", "1", "2", "3"],
            "label": ["0", "1", "0", "1"],
            "race": ["Asian", "Asian", "Black", "Black"],
            "file_name": [f"images/{i:06d}.png" for i in range(4)],
        }
    )


def test_round_trip(tmp_path, frame, png):
    spec = DatasetSpec(groups=("race",), min_group_size=0, values={"race": {"0": "Asian", "1": "Black"}})
    root = tmp_path / "out"
    for name in frame["file_name"]:
        png(root / name)
    path = write_metadata(root, frame, spec)
    assert path == root / "metadata.csv"
    assert path.read_text(encoding="utf-8").splitlines()[0] == "file_name,seed,label,race"
    ds = load_folder(root)
    assert ds.spec == spec
    assert ds.frame["race"].tolist() == ["Asian", "Asian", "Black", "Black"]
    assert ds.frame["seed"].tolist() == ["0", "1", "2", "3"]
    assert sorted(p.name for p in root.iterdir()) == ["fairsample.toml", "images", "metadata.csv"]


def test_overwrite_is_atomic_and_leaves_no_temporaries(tmp_path, frame):
    spec = DatasetSpec(groups=("race",))
    write_metadata(tmp_path, frame, spec)
    write_metadata(tmp_path, frame.iloc[:2], spec)
    assert len(pd.read_csv(tmp_path / "metadata.csv")) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_failed_write_keeps_old_file(tmp_path, frame, monkeypatch):
    spec = DatasetSpec(groups=("race",))
    write_metadata(tmp_path, frame, spec)
    before = (tmp_path / "metadata.csv").read_text()

    def half_write_then_fail(self, path, **kwargs):
        path.write_text("file_name\npartial")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_metadata(tmp_path, frame.iloc[:1], spec)
    assert (tmp_path / "metadata.csv").read_text() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_toml_round_trip_with_awkward_strings(tmp_path):
    spec = DatasetSpec(
        label='dx "final"',
        groups=("race\\eth", "sex"),
        unknown=("", "n/a\t", "ünknown"),
        split="split",
        patient_col="patient id",
        min_group_size=7,
        values={"race\\eth": {"0": "Asian", "1": 'Bl"ack'}, "sex": {"\x7f": "F"}},
        drop_unknown=True,
        preset="ham10000",
    )
    (tmp_path / "fairsample.toml").write_text(spec_to_toml(spec), encoding="utf-8")
    assert DatasetSpec.from_toml(tmp_path / "fairsample.toml") == spec


def test_missing_columns(tmp_path, frame):
    spec = DatasetSpec(groups=("race", "sex"))
    msg = _WRITE_MISSING_COLUMNS.format(missing=["sex"], present=list(frame.columns))
    with pytest.raises(DataError, match=re.escape(msg)):
        write_metadata(tmp_path, frame, spec)


def test_refuses_next_to_jsonl(tmp_path, frame):
    (tmp_path / "metadata.jsonl").write_text("{}\n")
    msg = _METADATA_EXISTS.format(root=tmp_path, other="metadata.jsonl", name="metadata.csv")
    with pytest.raises(DataError, match=re.escape(msg)):
        write_metadata(tmp_path, frame, DatasetSpec(groups=("race",)))
