"""`fairsample study`: the tiny profile end to end, resume after SIGKILL, one-line errors (issue #7).

The tiny profile trains an 8x8 'test' U-Net for a few steps, so its numbers are meaningless; these tests check the
machinery: the grid runs through the public SDK, every number of RESULTS.md is in results.json, and a killed study
continues without recomputing completed cells.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fairsample.study import _BAD_METHOD, _NO_ATTRIBUTE, _UNKNOWN_ATTRIBUTE, METHODS
from fairsample.study_report import table_numbers

from .conftest import invoke

TABLE1_ROWS = [
    "Base (real only)",
    "vanilla",
    "fairdiffusion",
    "vanilla + attribute_switch",
    "fairdiffusion + attribute_switch",
    "vanilla + fairdiffusion_perturbed",
    "fairdiffusion + fairdiffusion_perturbed",
]
SETS = [r for r in TABLE1_ROWS if r != "Base (real only)"]


@pytest.fixture(scope="module")
def study_env(tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    from fairsample.data.demo import make_demo_dataset

    root = tmp_path_factory.mktemp("study")
    demo = root / "demo"
    make_demo_dataset(demo, source="digits")
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1",
               FAIRSAMPLE_CACHE_DIR=str(root / "cache" / "engines"))  # fmt: skip
    return root, demo, env


def _command(demo: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "fairsample.cli", "study", "--data", str(demo), "--output-dir", str(out),
            "--profile", "tiny", "--format", "json"]  # fmt: skip


@pytest.fixture(scope="module")
def full_run(study_env) -> tuple[Path, dict[str, Any]]:
    root, demo, env = study_env
    out = root / "uninterrupted"
    proc = subprocess.run(_command(demo, out), capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads(proc.stdout)
    assert doc["skipped"] == []
    return out, json.loads((out / "results.json").read_text())


def _numbers(obj: Any) -> list[float]:
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _numbers(v)]
    if isinstance(obj, bool):
        return []
    if isinstance(obj, int | float) and math.isfinite(obj):
        return [float(obj)]
    return []


def _section_rows(markdown: str, heading: str) -> list[str]:
    """First-column labels of the first table after ``heading``."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    rows, seen_table = [], False
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            seen_table = True
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows.append(cells[0])
        elif seen_table:
            break
    return rows[2:]  # header and separator


def test_tiny_study_end_to_end(full_run) -> None:
    out, results = full_run
    for rel in ("results.json", "RESULTS.md", "study.json", "plots/table1.png", "cells/evaluate/all/cell.json",
                "cells/evaluate/all/report/report.json", "cells/generate/vanilla/set/metadata.csv"):  # fmt: skip
        assert (out / rel).is_file(), rel
    md = (out / "RESULTS.md").read_text()
    assert _section_rows(md, "## Table 1") == TABLE1_ROWS
    assert _section_rows(md, "## Generative table") == SETS
    assert "fairsample study --data" in md and results["command"].startswith("fairsample study --data")
    # every decimal number of every Markdown table is a value of results.json (at the shown precision)
    values = _numbers(results)
    shown = table_numbers(md)
    assert len(shown) > 100
    for token in shown:
        x, decimals = float(token), len(token.split(".")[1])
        tol = 0.5 * 10**-decimals + 1e-12
        assert any(abs(v - x) <= tol for v in values), f"{token} in RESULTS.md is not in results.json"
    # the plan and the traceability
    rows = {r["id"]: r for r in results["table1"]["rows"]}
    assert list(rows) == ["base", "vanilla", "fairdiffusion", "vanilla.attribute_switch",
                          "fairdiffusion.attribute_switch", "vanilla.fairdiffusion_perturbed",
                          "fairdiffusion.fairdiffusion_perturbed"]  # fmt: skip
    for r in results["table1"]["rows"][1:]:
        for key in ("train", "generate"):
            assert (out / r["sources"][key] / "cell.json").is_file()
        assert len(r["metrics"]["accuracy"]["values"]) == 3
    assert rows["vanilla"]["delta_vs_vanilla"]["accuracy"]["delta"] == 0.0
    for cell in results["cells"].values():
        assert cell["seconds"] >= 0 and cell["attempt"] == 1
    assert set(results["timings"]["stages"]) == {"base", "train", "export", "tau", "perturbation", "generate",
                                                 "evaluate"}  # fmt: skip
    assert results["profile"]["name"] == "tiny" and results["versions"]["torch"]


def test_resume_after_kill(study_env, full_run) -> None:
    root, demo, env = study_env
    _, reference = full_run
    out = root / "killed"
    first = out / "cells" / "base" / "vanilla" / "cell.json"
    with open(root / "killed.log", "w") as log:
        proc = subprocess.Popen(_command(demo, out), stdout=subprocess.DEVNULL, stderr=log, env=env)
        deadline = time.monotonic() + 120
        while not first.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.is_file(), (root / "killed.log").read_text()[-3000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "results.json").exists()
    marker_before = first.read_bytes()
    mtime_before = first.stat().st_mtime_ns

    proc = subprocess.run(_command(demo, out), capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads(proc.stdout)
    assert "base/vanilla" in doc["skipped"] and "base/vanilla" not in doc["ran"]
    assert first.read_bytes() == marker_before and first.stat().st_mtime_ns == mtime_before
    results = json.loads((out / "results.json").read_text())
    assert results["timings"]["this_run"]["skipped"] == doc["skipped"]
    # the same numbers as the uninterrupted run
    for got, want in zip(results["table1"]["rows"], reference["table1"]["rows"], strict=True):
        assert got["id"] == want["id"]
        assert got["metrics"] == want["metrics"], got["id"]
    for got, want in zip(results["generative"]["rows"], reference["generative"]["rows"], strict=True):
        for key in ("fid", "kid", "fid_by_group", "fid_variance", "ber", "ber_real_trained"):
            assert got[key] == want[key], (got["id"], key)

    # a third run recomputes nothing
    proc = subprocess.run(_command(demo, out), capture_output=True, text=True, env=env, timeout=300)
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
    res = invoke(runner, "study", "--data", demo, "--output-dir", tmp_path / "s", "--profile", "tiny",
                 "--attribute", "sex")  # fmt: skip
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
