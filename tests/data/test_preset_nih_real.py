"""The nih preset against the REAL NIH ChestX-ray14 Data_Entry_2017_v2020.csv shipped inside torchxrayvision."""

import pytest

from fairsample.data import apply_preset, load_folder, split_indices


@pytest.fixture(scope="module")
def ds(nih_data_entry_gz, tmp_path_factory):
    root = tmp_path_factory.mktemp("nih")
    (root / "Data_Entry_2017_v2020.csv.gz").symlink_to(nih_data_entry_gz)
    return load_folder(root, preset="nih", preset_options={"age_group": True}, check_files=False)


def test_nih_facts(ds):
    assert len(ds) == 112_120
    assert ds.spec.groups == ("sex", "age_group") and ds.spec.patient_col == "Patient ID"
    assert ds.frame["sex"].value_counts().to_dict() == {"M": 63_340, "F": 48_780}
    assert (ds.frame["label"] == "1").sum() == 13_317  # Effusion anywhere in "Finding Labels"
    assert (ds.frame["age_group"] == ">=60").sum() == 26_438
    assert ds.frame["Patient ID"].nunique() == 30_805
    assert ds.frame["file_name"][0] == "images/00000001_000.png"


def test_nih_split_groups_patients(ds):
    parts = split_indices(ds, seed=7)
    pid = ds.frame["Patient ID"].to_numpy()
    assert not set(pid[parts["test"]]) & (set(pid[parts["train"]]) | set(pid[parts["val"]]))
    assert len(parts["test"]) / len(ds) == pytest.approx(0.1, abs=0.005)


def test_nih_no_finding_label(ds):
    frame, _ = apply_preset(ds.frame, "nih", finding="No Finding", image_dir="")
    assert (frame["label"] == "1").sum() == 60_361
    assert frame["file_name"][0] == "00000001_000.png"
