"""`fairsample evaluate`: one subprocess run with the counterfactual set and the oracle (files written, --format json
is one JSON document), every new flag reaching the SDK (in-process, the SDK call stubbed), and bad input (in-process)
as one `error:` line with exit code 1 (or a usage error, exit 2) that leaves no output folder behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import typer

from fairsample.cli.evaluate import _human, parse_minority, parse_synthetic
from fairsample.core.errors import ConfigError

from .conftest import invoke, run_cli

#: tiny settings: 16-px images, 1 epoch, 2 seeds, few draws / resamples
FAST = ["--size", "16", "--epochs", "1", "--seeds", "0-1", "--allow-few-seeds", "--k", "2", "--n-resamples", "5"]
FAST += ["--feature-epochs", "2", "--closure-resamples", "300"]


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


def _error_line(res) -> str:
    """The one `error:` line of an in-process run (click Result) that exited 1 without a traceback."""
    assert res.exit_code == 1, res.stderr
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.stderr
    return errors[0]


def test_evaluate_json(runner, demo_dir, synthetic_dir, tmp_path):
    out = tmp_path / "report"
    # the evaluate family's one real subprocess run: console entry point, stdout holds exactly one JSON document
    proc = run_cli(
        "evaluate",
        "--real",
        demo_dir,
        "--synthetic",
        f"vanilla={synthetic_dir}",
        "--counterfactual",
        demo_dir / "counterfactual",
        "--minority",
        "dark",
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
    assert len(files["plots"]) == 7 and all(Path(p).is_file() for p in files["plots"].values())
    assert {"gap_closure_counterfactual", "gap_closure_test"} <= set(files["plots"])
    head = doc["headline"]
    assert head["attribute"] == "tone" and set(head["generative"]) == {"vanilla"}
    assert set(head["fairness"]) == {"base", "real+vanilla"}
    assert head["view"] == "counterfactual" and head["minority"] == "dark"
    report = json.loads(Path(files["json"]).read_text())
    assert report["run"]["command"].startswith("fairsample evaluate --real")
    assert report["settings"]["seeds"] == [0, 1] and report["settings"]["epochs"] == 1
    assert report["settings"]["minority"] == "dark" and report["downstream"]["minority"]["tone"]["rule"] == "given"
    assert report["data"]["counterfactual"]["n"] == 315 and report["data"]["oracle"] is None
    closure = report["downstream"]["rows"][1]["gap_closure"]["counterfactual"]["tone"]
    assert closure["value"] is None and closure["reason"].startswith("no oracle row")  # --oracle: the SDK tests
    assert head["fairness"]["real+vanilla"]["gap_closure"] is None
    assert report["generative"]["vanilla"]["overall"]["fid"] == head["generative"]["vanilla"]["fid"]
    assert "error:" not in proc.stderr
    text = _human(doc)  # the human format renders the same document
    assert "vanilla" in text and "real+vanilla" in text and files["markdown"] in text and "closure" in text
    # a second run into the same folder is refused without --overwrite; the report stays
    again = invoke(runner, "evaluate", "--real", demo_dir, "--synthetic", synthetic_dir, "--output-dir", out, *FAST)
    assert "--overwrite" in _error_line(again)
    assert Path(files["json"]).is_file()


def test_no_cell_overlap_is_one_line(runner, demo_dir, tmp_path):
    meta = pd.read_csv(demo_dir / "metadata.csv", dtype=str)
    real = _copy_rows(demo_dir, tmp_path / "real", meta[meta["tone"] != "dark"][["file_name", "tone", "label"]])
    gen = _copy_rows(demo_dir, tmp_path / "gen", meta[meta["tone"] == "dark"].head(10)[["file_name", "tone", "label"]])
    out = tmp_path / "report"
    res = invoke(runner, "evaluate", "--real", real, "--synthetic", gen, "--output-dir", out, *FAST)
    line = _error_line(res)
    assert "shares no cell with the real data" in line and "'gen'" in line
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_missing_label_column_is_one_line(runner, demo_dir, tmp_path):
    meta = pd.read_csv(demo_dir / "metadata.csv", dtype=str)
    gen = _copy_rows(demo_dir, tmp_path / "gen", meta.head(6)[["file_name", "tone"]])
    out = tmp_path / "report"
    res = invoke(
        runner,
        "evaluate",
        "--real",
        demo_dir,
        "--synthetic",
        f"mine={gen}",
        "--output-dir",
        out,
        *FAST,
        "--format",
        "json",
    )
    line = _error_line(res)
    assert "synthetic set 'mine' has no label column 'label'" in line
    assert res.stdout == "" and not out.exists()


def test_parse_synthetic_names_and_replicates(tmp_path):
    assert parse_synthetic(["runs/vanilla", "fair=runs/x", "fair=runs/y"]) == {
        "vanilla": [Path("runs/vanilla")],
        "fair": [Path("runs/x"), Path("runs/y")],  # a repeated NAME: generator replicates
    }
    with pytest.raises(typer.BadParameter, match="NAME=PATH"):
        parse_synthetic(["a/gen", "b/gen"])  # two folders that are only named by their folder name
    with pytest.raises(typer.BadParameter, match="NAME=PATH"):
        parse_synthetic(["runs/vanilla", "vanilla=runs/other"])
    with pytest.raises(typer.BadParameter, match="given twice"):
        parse_synthetic(["v=runs/a", "v=runs/./a"])
    odd = tmp_path / "x=y"
    odd.mkdir()
    assert parse_synthetic([str(odd)]) == {"x-y": [odd]}  # an existing folder wins over NAME=PATH; name sanitised
    assert parse_minority(None) is None and parse_minority(["dark"]) == "dark"
    assert parse_minority(["tone=dark", "site=B"]) == {"tone": "dark", "site": "B"}
    for bad in (["a", "b"], ["a", "tone=b"], ["tone="]):
        with pytest.raises(typer.BadParameter, match="--minority"):
            parse_minority(bad)


@pytest.fixture
def captured(monkeypatch):
    """Stub the SDK call: record its arguments, then stop with a one-line error (nothing is trained)."""
    calls: list[tuple] = []

    def fake(real, synthetic, **kwargs):
        calls.append((real, synthetic, kwargs))
        raise ConfigError("stub: evaluation not run")

    monkeypatch.setattr("fairsample.evaluation.evaluate.evaluate", fake)
    return calls


def test_flags_reach_the_sdk(runner, demo_dir, tmp_path, captured):
    meta = pd.read_csv(demo_dir / "metadata.csv", dtype=str).head(12)[["file_name", "tone", "label"]]
    real = tmp_path / "real"
    (real / "images").mkdir(parents=True)
    for name in meta["file_name"]:
        shutil.copy(demo_dir / name, real / name)
    meta.rename(columns={"label": "digit"}).to_csv(real / "metadata.csv", index=False)  # no fairsample.toml
    folders = {name: tmp_path / name for name in ("v0", "v1", "f", "cf", "oracle")}
    for path in folders.values():
        path.mkdir()
    result = invoke(
        runner,
        "evaluate",
        "--real",
        real,
        "--label-col",
        "digit",
        "--group-col",
        "tone",
        "--synthetic",
        f"vanilla={folders['v0']}",
        "--synthetic",
        f"vanilla={folders['v1']}",
        "--synthetic",
        f"fair={folders['f']}",
        "--counterfactual",
        folders["cf"],
        "--oracle",
        folders["oracle"],
        "--minority",
        "tone=dark",
        "--reference",
        "vanilla",
        "--closure-resamples",
        "50",
        "--output-dir",
        tmp_path / "out",
    )
    assert result.exit_code == 1 and "error: stub: evaluation not run" in result.stderr
    ((ds, synthetic, kwargs),) = captured
    assert ds.spec.label == "digit" and ds.spec.groups == ("tone",) and len(ds) == 12
    assert synthetic == {"vanilla": [folders["v0"], folders["v1"]], "fair": folders["f"]}
    assert kwargs["counterfactual"] == folders["cf"] and kwargs["oracle"] == folders["oracle"]
    assert kwargs["minority"] == {"tone": "dark"} and kwargs["reference"] == "vanilla"
    assert kwargs["closure_resamples"] == 50


def test_bad_new_flags(runner, demo_dir, synthetic_dir, tmp_path, captured):
    base = ["evaluate", "--real", demo_dir, "--synthetic", f"vanilla={synthetic_dir}", "--output-dir", tmp_path / "o"]
    missing = invoke(runner, *base, "--counterfactual", tmp_path / "nope")
    assert (
        missing.exit_code == 1 and "error: --counterfactual" in missing.stderr and "is not a folder" in missing.stderr
    )
    missing = invoke(runner, *base, "--oracle", tmp_path / "nope")
    assert missing.exit_code == 1 and "error: --oracle" in missing.stderr
    usage = invoke(runner, *base, "--reference", "fair")
    assert usage.exit_code == 2 and "is not a --synthetic name" in usage.stderr
    usage = invoke(runner, *base, "--minority", "dark", "--minority", "light")
    assert usage.exit_code == 2 and "--minority" in usage.stderr
    assert not captured and not (tmp_path / "o").exists()  # all refused before the SDK call
