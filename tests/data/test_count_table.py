"""count_table / format_count_table / check_report: per-group x label counts before any training."""

import json

import pandas as pd
import pytest

from fairsample.data import DatasetSpec, FolderDataset, check_report, count_table, format_count_table


@pytest.fixture
def ds():
    rows = [("F", "Black", "10"), ("F", "Black", "2"), ("F", "White", "2"), ("M", "White", "10"), ("M", "White", "10")]
    frame = pd.DataFrame(
        {
            "file_name": [f"{i}.png" for i in range(len(rows))],
            "sex": [r[0] for r in rows],
            "race": [r[1] for r in rows],
            "label": [r[2] for r in rows],
        }
    )
    return FolderDataset("/data/study", DatasetSpec(groups=("sex", "race")), frame, ["w1"])


def test_count_table_rows_and_columns(ds):
    table = count_table(ds)
    assert table.index.name == "group"
    assert list(table.columns) == ["2", "10", "total"]
    assert list(table.index) == [
        "sex=F",
        "sex=M",
        "race=Black",
        "race=White",
        "sex=F,race=Black",
        "sex=F,race=White",
        "sex=M,race=White",
        "total",
    ]
    assert table.loc["sex=F"].tolist() == [2, 1, 3]
    assert table.loc["race=White"].tolist() == [1, 2, 3]
    assert table.loc["sex=M,race=White"].tolist() == [0, 2, 2]
    assert table.loc["total"].tolist() == [2, 3, 5]
    assert (table.dtypes == "int64").all()


def test_single_attribute_has_no_intersections(ds):
    one = FolderDataset(ds.root, DatasetSpec(groups=("race",)), ds.frame)
    assert list(count_table(one).index) == ["race=Black", "race=White", "total"]


def test_format_count_table_is_aligned(ds):
    text = format_count_table(ds)
    lines = text.splitlines()
    assert lines[0] == "group \\ label     2  10  total"
    assert lines[1] == "sex=F             2   1      3"
    assert lines[-2] == "-" * len(lines[0])
    assert lines[-1] == "total             2   3      5"
    assert len({len(line) for line in lines}) == 1


def test_check_report_is_json_safe(ds):
    report = check_report(ds)
    assert json.loads(json.dumps(report)) == report
    assert report["root"] == "/data/study"
    assert report["n_images"] == 5
    assert report["label"] == "label" and report["groups"] == ["sex", "race"]
    assert report["labels"] == ["2", "10"]
    assert report["attribute_values"] == {"sex": ["F", "M"], "race": ["Black", "White"]}
    assert report["cells"][0] == {
        "cell": "sex=F,race=Black,label=2",
        "count": 1,
        "sex": "F",
        "race": "Black",
        "label": "2",
    }
    assert [c["count"] for c in report["cells"]] == [1, 1, 1, 2]
    assert report["warnings"] == ["w1"]
    assert report["spec"] == ds.spec.to_dict()
