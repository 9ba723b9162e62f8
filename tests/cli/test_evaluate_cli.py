"""`fairsample evaluate` in a subprocess: files written, --format json is one JSON document, bad input is one
`error:` line with exit code 1 and leaves no output folder behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import typer

from fairsample.cli_evaluate import _human, parse_synthetic

from .conftest import run_cli

#: tiny settings: 16-px images, 1 epoch, 3 seeds, few draws / resamples
FAST = ["--size", "16", "--epochs", "1", "--seeds", "0-2", "--k", "2", "--n-resamples", "5", "--feature-epochs", "2"]


def _copy_rows(demo_dir: Path, root: Path, frame: pd.DataFrame) -> Path:
    """A generated-looking folder (metadata.csv + fairsample.toml) holding copies of some demo images."""
    (root / "images").mkdir(parents=True)
    for name in frame["file_name"]:
        shutil.copy(demo_dir / name, root / name)
    frame.to_csv(root / "metadata.csv", index=False)
    (root / "fairsample.toml").write_text('label = "label"\ngroups = ["tone"]\nmin_group_size = 1\n')
    return root


@pytest.fixture(scope="module")
def synthetic_dir(demo_dir, tmp_path_factory) -> Path:
    """3 images per cell of the demo, standing in for a generated set."""
    meta = pd.read_csv(demo_dir / "metadata.csv", dtype=str)
    rows = meta.groupby(["tone", "label"]).head(3)[["file_name", "tone", "label"]]
    return _copy_rows(demo_dir, tmp_path_factory.mktemp("evaluate_cli") / "gen", rows)


def _error_line(proc) -> str:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def test_evaluate_json(demo_dir, synthetic_dir, tmp_path):
    out = tmp_path / "report"
    proc = run_cli(
        "evaluate",
        "--real",
        demo_dir,
        "--synthetic",
        f"vanilla={synthetic_dir}",
        "--output-dir",
        out,
        *FAST,
        "--format",
        "json",
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)  # exactly one JSON document
    assert doc["output_dir"] == str(out.absolute())
    files = doc["files"]
    for key in ("json", "markdown", "html"):
        assert Path(files[key]).is_file()
    assert len(files["plots"]) == 5 and all(Path(p).is_file() for p in files["plots"].values())
    head = doc["headline"]
    assert head["attribute"] == "tone" and set(head["generative"]) == {"vanilla"}
    assert set(head["fairness"]) == {"base", "real+vanilla"}
    report = json.loads(Path(files["json"]).read_text())
    assert report["run"]["command"].startswith("fairsample evaluate --real")
    assert report["settings"]["seeds"] == [0, 1, 2] and report["settings"]["epochs"] == 1
    assert report["generative"]["vanilla"]["overall"]["fid"] == head["generative"]["vanilla"]["fid"]
    assert "error:" not in proc.stderr
    text = _human(doc)  # the human format renders the same document
    assert "vanilla" in text and "real+vanilla" in text and files["markdown"] in text
    # a second run into the same folder is refused without --overwrite; the report stays
    again = run_cli("evaluate", "--real", demo_dir, "--synthetic", synthetic_dir, "--output-dir", out, *FAST)
    assert "--overwrite" in _error_line(again)
    assert Path(files["json"]).is_file()


def test_no_cell_overlap_is_one_line(demo_dir, tmp_path):
    meta = pd.read_csv(demo_dir / "metadata.csv", dtype=str)
    real = _copy_rows(demo_dir, tmp_path / "real", meta[meta["tone"] != "dark"][["file_name", "tone", "label"]])
    gen = _copy_rows(demo_dir, tmp_path / "gen", meta[meta["tone"] == "dark"].head(10)[["file_name", "tone", "label"]])
    out = tmp_path / "report"
    proc = run_cli("evaluate", "--real", real, "--synthetic", gen, "--output-dir", out, *FAST)
    line = _error_line(proc)
    assert "shares no cell with the real data" in line and "'gen'" in line
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_missing_label_column_is_one_line(demo_dir, tmp_path):
    meta = pd.read_csv(demo_dir / "metadata.csv", dtype=str)
    gen = _copy_rows(demo_dir, tmp_path / "gen", meta.head(6)[["file_name", "tone"]])
    out = tmp_path / "report"
    proc = run_cli(
        "evaluate", "--real", demo_dir, "--synthetic", f"mine={gen}", "--output-dir", out, *FAST, "--format", "json"
    )
    line = _error_line(proc)
    assert "synthetic set 'mine' has no label column 'label'" in line
    assert proc.stdout == "" and not out.exists()


def test_parse_synthetic_names(tmp_path):
    assert parse_synthetic(["runs/vanilla", "fair=runs/x"]) == {
        "vanilla": Path("runs/vanilla"),
        "fair": Path("runs/x"),
    }
    with pytest.raises(typer.BadParameter, match="NAME=PATH"):
        parse_synthetic(["a/gen", "b/gen"])
    odd = tmp_path / "x=y"
    odd.mkdir()
    assert parse_synthetic([str(odd)]) == {"x-y": odd}  # an existing folder wins over NAME=PATH; name sanitised
