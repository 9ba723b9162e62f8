"""The shared demo folder (demo_dir, tests/conftest.py) loaded once, and a tiny training config."""

from __future__ import annotations

import pytest

from fairsample.core.config import TrainConfig


@pytest.fixture(scope="session")
def demo_ds(demo_dir):
    from fairsample.data.folder import load_folder

    return load_folder(demo_dir)


@pytest.fixture
def tiny_cfg() -> TrainConfig:
    """8×8 images, the 'test' U-Net, a few steps: milliseconds per step."""
    return TrainConfig(
        architecture="test",
        image_size=8,
        cross_attention_dim=8,
        batch_size=8,
        max_steps=6,
        lr_warmup_steps=2,
        checkpoint_every=3,
        learning_rate=1e-3,
        device="cpu",
    )
