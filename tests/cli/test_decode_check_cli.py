"""`fairsample data check` decodes every image and `fairsample train` refuses bad images before step 1."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .conftest import TINY_TRAIN, invoke, run_cli

BAD = "images/00003.png"


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def _dataset(root: Path, damage: str | None = None) -> Path:
    """8 noise images of 8 px, tone light/dark x label 0/1; optionally one of them damaged."""
    (root / "images").mkdir(parents=True)
    lines = ["file_name,label,tone"]
    for i in range(8):
        name = f"images/{i:05d}.png"
        (root / name).write_bytes(_png(i))
        lines.append(f"{name},{i % 2},{'light' if i < 4 else 'dark'}")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "fairsample.toml").write_text('groups = ["tone"]\nmin_group_size = 0\n', encoding="utf-8")
    if damage == "corrupt":
        (root / BAD).write_bytes(np.random.default_rng(99).integers(0, 256, 200, dtype=np.uint8).tobytes())
    elif damage == "truncated":
        data = _png(3)
        (root / BAD).write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        (root / BAD).write_bytes(b"")
    return root


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    err = [x for x in stderr.splitlines() if x.strip() and x.startswith("error: ")]
    assert len(err) == 1, stderr
    return err[0]


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "empty"])
def test_check_reports_bad_image(runner, tmp_path, damage):
    root = _dataset(tmp_path / "ds", damage)
    res = invoke(runner, "data", "check", root)
    assert res.exit_code == 1 and res.stdout == ""
    line = _one_error_line(res.stderr)
    assert "1 of 8 images cannot be used (full decode check)" in line and BAD in line


def test_check_subprocess_one_line_no_traceback(tmp_path):
    # the data family's one real subprocess run: console entry point, real streams, exit code
    proc = run_cli("data", "check", _dataset(tmp_path / "ds", "truncated"))
    assert proc.returncode == 1 and proc.stdout == ""
    assert f"{BAD} (truncated" in _one_error_line(proc.stderr)
    assert [x for x in proc.stderr.splitlines() if x.strip()] == [_one_error_line(proc.stderr)]


def test_quick_misses_truncation_full_catches_it(runner, tmp_path):
    root = _dataset(tmp_path / "ds", "truncated")
    res = invoke(runner, "data", "check", root, "--quick", "--format", "json")
    assert res.exit_code == 0
    assert json.loads(res.stdout)["decode"] == {"mode": "quick", "n_checked": 8, "n_bad": 0, "bad": []}
    assert invoke(runner, "data", "check", root, "--format", "json").exit_code == 1


def test_clean_dataset_passes_with_decode_result(runner, tmp_path):
    root = _dataset(tmp_path / "ds")
    res = invoke(runner, "data", "check", root, "--format", "json")
    assert res.exit_code == 0
    assert json.loads(res.stdout)["decode"] == {"mode": "full", "n_checked": 8, "n_bad": 0, "bad": []}
    res = invoke(runner, "data", "check", root)
    assert res.exit_code == 0 and "all 8 readable (full decode check)" in res.stdout.splitlines()[0]


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "empty"])
def test_train_fails_before_step_one(runner, tmp_path, damage):
    root = _dataset(tmp_path / "ds", damage)
    out = tmp_path / "m"
    res = invoke(
        runner,
        "train",
        root,
        "--output-dir",
        out,
        "--max-steps",
        "1",
        "--split",
        "all",
        *TINY_TRAIN,
        "--format",
        "json",
    )
    assert res.exit_code == 1 and res.stdout == ""
    line = _one_error_line(res.stderr)
    assert "1 of 8 images cannot be used (full decode check)" in line and BAD in line
    assert not (out / "fairsample_config.json").exists()
    assert not (out / "logs" / "train_log.jsonl").exists()
