"""CLI fixtures: a tiny trained bundle (on the shared demo folder of tests/conftest.py), built once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fairsample.cli import app

#: CLI flags that make `fairsample train` tiny (8×8 images, the 'test' U-Net)
TINY_TRAIN = ["--architecture", "test", "--image-size", "8", "--batch-size", "8", "--device", "cpu"]


@pytest.fixture(scope="session")
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, *args: str):
    """Run the app in-process; returns the click Result (stdout in .stdout, stderr in .stderr)."""
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m fairsample.cli` in a subprocess (real exit codes, real streams)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-m", "fairsample.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, demo_dir) -> Path:
    from fairsample.core.config import TrainConfig
    from fairsample.data.folder import load_folder
    from fairsample.train.loop import train

    out = tmp_path_factory.mktemp("cli") / "model"
    cfg = TrainConfig(
        architecture="test",
        image_size=8,
        cross_attention_dim=8,
        batch_size=8,
        max_steps=3,
        checkpoint_every=0,
        device="cpu",
    )
    train(load_folder(demo_dir), out, cfg, progress=False)
    return out
