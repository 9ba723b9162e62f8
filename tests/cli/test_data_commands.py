"""`fairsample data demo` and `fairsample data check`: tables, JSON, one-line errors."""

from __future__ import annotations

import json

import pytest

from .conftest import invoke


def test_demo_then_check_prints_count_table(runner, tmp_path):
    res = invoke(runner, "data", "demo", tmp_path / "d", "--source", "digits")
    assert res.exit_code == 0 and "wrote" in res.stdout
    res = invoke(runner, "data", "check", tmp_path / "d")
    assert res.exit_code == 0
    lines = res.stdout.splitlines()
    assert lines[1].split() == ["group", "\\", "label", "0", "1", "2", "3", "4", "total"]
    assert any(line.startswith("tone=dark") for line in lines)
    assert lines[-1].startswith("total")


def test_check_json_is_one_document(runner, demo_dir):
    res = invoke(runner, "data", "check", demo_dir, "--format", "json")
    doc = json.loads(res.stdout)
    assert doc["label"] == "label" and doc["groups"] == ["tone"]
    assert len(doc["cells"]) == 15 and sum(c["count"] for c in doc["cells"]) == doc["n_images"]


def _copy_demo(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("damage", ["missing_image", "unknown_group", "malformed_csv"])
def test_broken_folder_gives_one_line_error(runner, demo_dir, tmp_path, damage):
    root = _copy_demo(demo_dir, tmp_path / "broken")
    meta = root / "metadata.csv"
    lines = meta.read_text().splitlines()
    if damage == "missing_image":
        (root / lines[5].split(",")[0]).unlink()
        expect = "1 row in metadata.csv has no matching file (first: "
    elif damage == "unknown_group":
        cols = lines[3].split(",")
        cols[2] = "unknown"
        lines[3] = ",".join(cols)
        meta.write_text("\n".join(lines) + "\n")
        expect = "unknown tone value"
    else:
        lines[4] = lines[4] + ',"unterminated'
        meta.write_text("\n".join(lines) + "\n")
        expect = "metadata.csv"
    res = invoke(runner, "data", "check", root)
    assert res.exit_code == 1
    assert "Traceback" not in res.stderr
    err = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and expect in err[0], res.stderr
    assert res.stdout == ""


def test_missing_folder_and_usage_errors(runner, tmp_path):
    res = invoke(runner, "data", "check", tmp_path / "nope")
    assert res.exit_code == 1 and res.stderr.startswith("error: ") and "Traceback" not in res.stderr
    res = invoke(runner, "data", "demo", tmp_path / "x", "--source", "imagenet")
    assert res.exit_code == 2


def test_info_json(runner):
    doc = json.loads(invoke(runner, "info", "--format", "json").stdout)
    assert doc["versions"]["fairsample"] and "ort" in doc["extras"]
