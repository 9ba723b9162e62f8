"""`fairsample study`: the tiny profile end to end, a foreign dataset, resume after SIGKILL, one-line errors (#7, #12).

The tiny profile trains an 8x8 'test' U-Net for a few steps, so its numbers are meaningless; these tests check the
machinery: the grid runs through the public SDK (shared base → every model → sets → one evaluation with the oracle
and the counterfactual view) and writes results.json / RESULTS.md / plots with their schema (the Markdown text is
unit-tested in tests/workflows/test_study_report.py), a dataset whose cells differ from the embedded model's runs
from a folder without fairsample.toml, and a killed study continues without recomputing
completed cells. The engine is the torch backend (no ONNX export) to keep the suite fast.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from fairsample.workflows.study import _BAD_METHOD, _NO_ATTRIBUTE, _UNKNOWN_ATTRIBUTE, METHODS

from .conftest import invoke

ROWS = [
    "Base (real only)",
    "oracle (real held-out images)",
    "vanilla",
    "fairdiffusion",
    "vanilla + attribute_switch",
    "fairdiffusion + attribute_switch",
    "vanilla + fairdiffusion_perturbed",
    "fairdiffusion + fairdiffusion_perturbed",
]


@pytest.fixture(scope="module")
def study_env(tmp_path_factory, demo_dir) -> tuple[Path, Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("study")
    demo = demo_dir  # read-only: a study writes only under its --output-dir
    # the conditioning guard is part of the study's protocol (the suite turns it off for other tests)
    env = dict(
        os.environ,
        PYTHONWARNINGS="ignore",
        OMP_NUM_THREADS="1",
        FAIRSAMPLE_GUARD="1",
        FAIRSAMPLE_CACHE_DIR=str(root / "cache" / "engines"),
    )
    return root, demo, env


def _command(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fairsample.cli",
        "study",
        "--data",
        str(data),
        "--output-dir",
        str(out),
        "--profile",
        "tiny",
        "--backend",
        "torch",
        "--format",
        "json",
        *extra,
    ]


@pytest.fixture(scope="module")
def full_run(study_env) -> tuple[Path, dict[str, Any]]:
    root, demo, env = study_env
    out = root / "demo_study"
    proc = subprocess.run(_command(demo, out), capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads(proc.stdout)
    assert doc["skipped"] == []
    return out, json.loads((out / "results.json").read_text())


def test_tiny_study_end_to_end(full_run) -> None:
    out, results = full_run
    for rel in (
        "results.json",
        "RESULTS.md",
        "study.json",
        "plots/closure_counterfactual.png",
        "plots/curve.png",
        "cells/base/base/cell.json",
        "cells/oracle/oracle/set/metadata.csv",
        "cells/evaluate/all/report/report.json",
        "cells/generate/vanilla@0/set/metadata.csv",
        "cells/generate/vanilla@1/set/metadata.csv",
    ):
        assert (out / rel).is_file(), rel
    # RESULTS.md is written, one gap-closure section per view; its text (rows, cells, every number from
    # results.json) is unit-tested on a hand-made document in tests/workflows/test_study_report.py
    md = (out / "RESULTS.md").read_text()
    assert md.startswith("# fairsample study") and results["command"].startswith("fairsample study --data")
    assert [line for line in md.splitlines() if line.startswith("## Gap closure — ")] == [
        "## Gap closure — counterfactual test set (paired content)",
        "## Gap closure — real test split",
    ]
    assert [r["label"] for r in results["rows"]] == ROWS
    # protocol: a shared base without the minority, two generator seeds per method, the oracle in the plan's numbers
    base = results["base"]
    assert base["minority"] == "dark" and base["minority_images"] == 0 and base["minority_in_train_split"] > 0
    assert results["views"] == ["counterfactual", "test"] and results["minority"] == "dark"
    rows = {r["id"]: r for r in results["rows"]}
    assert list(rows) == [
        "base",
        "oracle",
        "vanilla",
        "fairdiffusion",
        "vanilla.attribute_switch",
        "fairdiffusion.attribute_switch",
        "vanilla.fairdiffusion_perturbed",
        "fairdiffusion.fairdiffusion_perturbed",
    ]
    oracle_meta = pd.read_csv(out / "cells/oracle/oracle/set/metadata.csv")
    plan_counts = json.loads((out / "cells/oracle/oracle/cell.json").read_text())["outputs"]["counts"]
    assert len(oracle_meta) == sum(plan_counts.values()) == rows["oracle"]["n_train_synthetic"]
    for name in ("vanilla", "fairdiffusion.attribute_switch"):
        r = rows[name]
        assert r["replicates"] == [f"{r['method']}@0", f"{r['method']}@1"]
        assert r["guard"] in ("ok", "degraded", "collapsed")
        for folder in r["sources"]["train"] + r["sources"]["generate"]:
            assert (out / folder / "cell.json").is_file()
        for view in ("counterfactual", "test"):
            block = r["views"][view]
            assert len(block["metrics"]["accuracy"]["values"]) == 4  # 2 generators x 2 classifier seeds
            assert len(block["minority_gap_by_replicate"]) == 2
            closure = block["closure"]
            assert closure is not None and ("value" in closure and ("reason" in closure or closure["ci"]))
        meta = pd.read_csv(out / r["sources"]["generate"][0] / "set" / "metadata.csv")
        assert len(meta) == sum(plan_counts.values())
    # every model went through the conditioning guard, and vanilla's first model has the curve
    assert all(m["guard"]["flag"] in ("ok", "degraded", "collapsed") for m in results["models"].values())
    assert [p["step"] for p in results["curve"]["points"]] == [0, 1, 2]
    for cell in results["cells"].values():
        assert cell["seconds"] >= 0 and cell["attempt"] == 1
    assert {"base", "oracle", "train", "curve", "tau", "perturbation", "generate", "evaluate"} <= set(
        results["timings"]["stages"]
    )
    assert results["profile"]["name"] == "tiny" and results["versions"]["torch"]


def _foreign(root: Path, demo: Path) -> Path:
    """The demo's images under other column names, two groups and other labels; no fairsample.toml."""
    data = root / "foreign"
    data.mkdir()
    meta = pd.read_csv(demo / "metadata.csv")
    frame = pd.DataFrame(
        {
            "file_name": meta["file_name"],
            "finding": meta["label"].map({0: "none", 1: "mild", 2: "mild", 3: "severe", 4: "severe"}),
            "sex": meta["tone"].map({"light": "F", "medium": "F", "dark": "M"}),
        }
    )
    frame.to_csv(data / "metadata.csv", index=False)
    (data / "images").symlink_to(demo / "images")
    return data


def test_foreign_dataset_runs_and_a_killed_study_resumes(study_env) -> None:
    root, demo, env = study_env
    data = _foreign(root, demo)
    out = root / "foreign_study"
    cmd = _command(
        data, out, "--attribute", "sex", "--label-col", "finding", "--methods", "vanilla", "--samplers", "conditional"
    )
    first = out / "cells" / "base" / "base" / "cell.json"
    with open(root / "killed.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env)
        deadline = time.monotonic() + 180
        while not first.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.is_file(), (root / "killed.log").read_text()[-3000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "results.json").exists()
    marker_before, mtime_before = first.read_bytes(), first.stat().st_mtime_ns

    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads(proc.stdout)
    assert "base/base" in doc["skipped"] and "base/base" not in doc["ran"]
    assert first.read_bytes() == marker_before and first.stat().st_mtime_ns == mtime_before
    results = json.loads((out / "results.json").read_text())
    assert results["attribute"] == "sex" and results["minority"] == "M" and results["views"] == ["test"]
    assert [r["id"] for r in results["rows"]] == ["base", "vanilla"]
    closure = results["rows"][1]["views"]["test"]["closure"]
    assert closure["value"] is None and "oracle" in closure["reason"]
    cells = sorted(json.loads((out / "cells/train/vanilla@0/model/fairsample_config.json").read_text())["cells"])
    assert cells[0].startswith("sex=F,finding=")  # the model speaks the dataset's own cells

    # a third run recomputes nothing
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads(proc.stdout)
    assert doc["ran"] == [] and len(doc["skipped"]) == len(results["grid"]["cells"])


def test_unknown_method_is_one_line(runner, study_env, tmp_path) -> None:
    _, demo, _ = study_env
    res = invoke(runner, "study", "--data", demo, "--output-dir", tmp_path / "s", "--methods", "vanilla,fairfoo")
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr
    assert lines[0] == "error: " + _BAD_METHOD.format(bad=["fairfoo"], allowed=list(METHODS))
    assert not (tmp_path / "s").exists()


def test_data_without_the_attribute_is_one_line(runner, study_env, tmp_path) -> None:
    _, demo, _ = study_env
    res = invoke(
        runner, "study", "--data", demo, "--output-dir", tmp_path / "s", "--profile", "tiny", "--attribute", "sex"
    )
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: attribute 'sex' is not a group column")
    assert _UNKNOWN_ATTRIBUTE.split("{")[0] in lines[0]

    # a folder whose metadata names no sensitive attribute at all
    plain = tmp_path / "plain"
    plain.mkdir()
    rows = (demo / "metadata.csv").read_text().splitlines()
    header = rows[0].split(",")
    keep = [header.index("file_name"), header.index("label")]
    (plain / "metadata.csv").write_text("\n".join(",".join(r.split(",")[k] for k in keep) for r in rows) + "\n")
    (plain / "fairsample.toml").write_text('label = "label"\n')
    (plain / "images").symlink_to(demo / "images")
    res = invoke(runner, "study", "--data", plain, "--output-dir", tmp_path / "s2", "--profile", "tiny")
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: " + _NO_ATTRIBUTE.split("{")[0])
    assert not (tmp_path / "s2").exists()


def test_missing_base_and_holdout_are_one_line(runner, study_env, tmp_path) -> None:
    _, demo, _ = study_env
    for flag, value, text in (("--base", tmp_path / "nope", "`base`"), ("--holdout", tmp_path / "nope", "`holdout`")):
        res = invoke(runner, "study", "--data", demo, "--output-dir", tmp_path / "s", "--profile", "tiny", flag, value)
        assert res.exit_code == 1, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {text} ") and "does not exist" in lines[0]
    assert not (tmp_path / "s").exists()
