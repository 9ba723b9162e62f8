"""The chexpert preset against the REAL CheXpert-v1.0-small train.csv shipped (gzipped) inside torchxrayvision.

The file is read from site-packages (linked into tmp_path, never copied into the repo); the test skips with the reason
when torchxrayvision is not installed.
"""

import re

import numpy as np
import pytest

from fairsample.core.errors import DataError, FairsampleWarning
from fairsample.data import apply_preset, count_table, load_folder, read_metadata, split_indices
from fairsample.data.presets import CHEXPERT_FINDINGS

N_ROWS = 223_414
UNKNOWN_SEX_ROW = 137_796  # 1-based data row whose Sex is "Unknown" (patient33093)


@pytest.fixture(scope="module")
def native(chexpert_train_gz):
    return read_metadata(chexpert_train_gz)


@pytest.fixture(scope="module")
def root(chexpert_train_gz, tmp_path_factory):
    root = tmp_path_factory.mktemp("chexpert")
    (root / "train.csv.gz").symlink_to(chexpert_train_gz)
    return root


@pytest.fixture(scope="module")
def ds(root):
    with pytest.warns(FairsampleWarning, match=re.escape("dropped 1 row with an unknown sex value")):
        return load_folder(root, preset="chexpert", drop_unknown=True, check_files=False)


def test_native_layout(native):
    assert len(native) == N_ROWS
    assert list(native.columns) == ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_FINDINGS]
    assert native["Pleural Effusion"].value_counts().to_dict() == {
        "": 90_203,
        "1.0": 86_187,
        "0.0": 35_396,
        "-1.0": 11_628,
    }


def test_unknown_sex_is_reported_with_its_row(root):
    msg = f"1 row in train.csv.gz has an unknown sex value (first: row {UNKNOWN_SEX_ROW}, 'Unknown')"
    with pytest.raises(DataError, match=re.escape(msg)):
        load_folder(root, preset="chexpert", check_files=False)


def test_loaded_dataset_facts(ds):
    assert len(ds) == N_ROWS - 1
    assert ds.spec.preset == "chexpert" and ds.spec.patient_col == "patient_id"
    assert ds.attribute_values() == {"sex": ["Female", "Male"]}
    sex = ds.frame["sex"].value_counts()
    assert (sex["Male"], sex["Female"]) == (132_636, 90_777)
    assert sex["Female"] / len(ds) == pytest.approx(0.406, abs=0.001)
    assert ds.frame["patient_id"].nunique() == 64_540 - 1  # patient33093's only image is the unknown-sex row
    assert ds.frame["file_name"].str.match(r"CheXpert-v1\.0-small/train/patient\d{5}/study\d+/view\d_").all()
    assert ds.label_values() == ["0", "1"]


def test_count_table_on_real_data(ds):
    table = count_table(ds)
    assert table.loc["sex=Female"].tolist() == [55_562, 35_215, 90_777]
    assert table.loc["sex=Male"].tolist() == [81_664, 50_972, 132_636]
    assert table.loc["total", "1"] == 86_187  # only the labeller's 1.0 is positive under uncertain="zero"


@pytest.mark.parametrize(
    ("options", "n_rows", "n_positive"),
    [
        ({"uncertain": "one"}, N_ROWS, 86_187 + 11_628),
        ({"uncertain": "drop"}, N_ROWS - 11_628, 86_187),
        ({"frontal_only": True}, 191_027, None),
    ],
)
def test_policies_on_real_data(native, options, n_rows, n_positive):
    frame, _ = apply_preset(native, "chexpert", **options)
    assert len(frame) == n_rows
    if n_positive is not None:
        assert (frame["label"] == "1").sum() == n_positive


def test_other_finding_and_age_group(native):
    frame, spec = apply_preset(native, "chexpert", finding="Cardiomegaly", age_group=True)
    assert spec.groups == ("sex", "age_group")
    assert (frame["label"] == "1").sum() == (native["Cardiomegaly"] == "1.0").sum() > 20_000
    assert frame["age_group"].value_counts().to_dict() == {">=60": 122_760, "<60": 100_654}


def test_patient_grouped_split_on_real_data(ds):
    parts = split_indices(ds, seed=0)
    pid = ds.frame["patient_id"].to_numpy()
    train, val, test = (set(pid[parts[k]]) for k in ("train", "val", "test"))
    assert not (train & val or train & test or val & test)
    shares = [len(parts[k]) / len(ds) for k in ("train", "val", "test")]
    assert shares == pytest.approx([0.8, 0.1, 0.1], abs=0.005)
    assert np.array_equal(np.sort(np.concatenate(list(parts.values()))), np.arange(len(ds)))
