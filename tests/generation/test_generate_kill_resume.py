"""`fairsample generate` killed with SIGKILL mid-run, then re-run with the same command: the folder ends byte-identical
to an uninterrupted run — no duplicate, no missing image, no leftover temporary file — and a different plan into the
same folder is refused. The one home of generation's resume test (sharded re-runs: test_sharding.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fairsample.cli import app

#: 30 images, one per engine batch, so PNGs appear one by one
ARGS = ["generate", "--per-cell", "2", "--seeds", "100-129", "--steps", "4", "--batch-size", "1"]
POLL = 0.05  # seconds between looks at the folder
KILL_AFTER = 3  # PNGs present before the kill


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def pngs(folder: Path) -> list[Path]:
    return sorted((folder / "images").glob("[0-9]*.png")) if (folder / "images").is_dir() else []


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")
def test_sigkill_then_rerun_is_byte_identical_to_an_uninterrupted_run(tmp_path):
    killed = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "fairsample.cli", *ARGS, "--output-dir", str(killed)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and len(pngs(killed)) < KILL_AFTER:
            time.sleep(POLL)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    present = len(pngs(killed))
    assert KILL_AFTER <= present < 30, f"{present} PNGs when killed (the run must be caught mid-way)"
    assert not (killed / "metadata.csv").exists() and not (killed / "config.json").exists()
    assert (killed / "plan.json").is_file()

    # a stray temporary file of a write in flight when the process died is cleaned up by the re-run
    stray = killed / "images" / f".{pngs(killed)[0].name}.tmp123.png"
    stray.write_bytes(b"partial")

    runner = CliRunner()
    res = runner.invoke(app, [*ARGS, "--output-dir", str(killed), "--format", "json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    # the re-run generated exactly what was missing (a PNG that exists is complete: written via rename)
    assert json.loads(res.stdout)["n_generated"] == 30 - present

    res = runner.invoke(app, [*ARGS, "--output-dir", str(tmp_path / "whole")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    whole, resumed = snapshot(tmp_path / "whole"), snapshot(killed)
    assert len(pngs(killed)) == 30 and not [k for k in resumed if "/." in k or k.startswith(".")]
    assert resumed.keys() == whole.keys() and resumed == whole and not stray.exists()

    # a different plan into the same folder is refused (one line, exit 1) and leaves the folder as it was
    other = ["200-229" if a == "100-129" else a for a in ARGS]  # the same command with other seeds
    res = runner.invoke(app, [*other, "--output-dir", str(killed)], catch_exceptions=False)
    assert res.exit_code == 1 and "holds a different generation" in res.stderr and "Traceback" not in res.stderr
    assert snapshot(killed) == whole
