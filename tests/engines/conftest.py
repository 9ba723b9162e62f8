"""Fixtures for the engine conformance suite: a tiny seeded UNet2DConditionModel and matching inputs."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from diffusers import UNet2DConditionModel

from fairsample.engines.torch_engine import TorchEngine
from tests.tiny import build_tiny_unet as _build_tiny_unet

SEQ_LEN = 4
HIDDEN_DIM = 16


def build_tiny_unet(sample_size: int = 8, seed: int = 0) -> UNet2DConditionModel:
    """The shared tiny U-Net (tests/tiny.py) with this folder's hidden size."""
    return _build_tiny_unet(sample_size, seed, cross_attention_dim=HIDDEN_DIM)


@pytest.fixture
def make_unet() -> Callable[..., UNet2DConditionModel]:
    """Factory for fresh tiny U-Nets: ``make_unet(sample_size=8, seed=0)``."""
    return build_tiny_unet


@pytest.fixture
def engine() -> TorchEngine:
    """A float32 CPU torch engine over a fresh tiny U-Net (epsilon prediction)."""
    return TorchEngine(build_tiny_unet(), prediction_type="epsilon")


@pytest.fixture
def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded (sample [2, 3, 8, 8], timestep [2], encoder_hidden_states [2, 4, 16]) float32 inputs."""
    g = torch.Generator().manual_seed(1234)
    sample = torch.randn(2, 3, 8, 8, generator=g)
    timestep = torch.tensor([999.0, 10.5])
    ehs = torch.randn(2, SEQ_LEN, HIDDEN_DIM, generator=g)
    return sample, timestep, ehs
