"""Fixtures for the sampler suite: a tiny seeded U-Net engine, a scheduler config and conditioning plans."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
from diffusers import UNet2DConditionModel

from fairsample.engines.torch_engine import TorchEngine
from fairsample.samplers.base import ConditioningPlan
from tests.tiny import build_tiny_unet as _build_tiny_unet

SEQ_LEN = 4
HIDDEN_DIM = 16
SAMPLE_SIZE = 8
N_CELLS = 8


def build_tiny_unet(sample_size: int = SAMPLE_SIZE, seed: int = 0) -> UNet2DConditionModel:
    """The shared tiny U-Net (tests/tiny.py) with this folder's hidden size."""
    return _build_tiny_unet(sample_size, seed, cross_attention_dim=HIDDEN_DIM)


class CountingEngine:
    """Wraps an engine and records the batch size N and the timestep tensor of every call."""

    def __init__(self, inner: TorchEngine) -> None:
        self.inner = inner
        self.calls: list[int] = []
        self.timesteps: list[torch.Tensor] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __call__(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        *,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        self.calls.append(int(sample.shape[0]))
        self.timesteps.append(torch.as_tensor(timestep).clone())
        return self.inner(sample, timestep, encoder_hidden_states, out=out)


@pytest.fixture(scope="module")
def engine() -> TorchEngine:
    """A float32 CPU torch engine (epsilon, batch-invariant) over a tiny U-Net; read-only in tests."""
    return TorchEngine(build_tiny_unet(), prediction_type="epsilon")


@pytest.fixture
def scheduler_config() -> dict[str, Any]:
    """A bundle-style scheduler config (1000 linear-beta steps, epsilon prediction)."""
    return {"num_train_timesteps": 1000, "beta_schedule": "linear", "prediction_type": "epsilon"}


@pytest.fixture(scope="module")
def cell_embeddings() -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded (cond [8, 4, 16], uncond [1, 4, 16]) embeddings: one conditional row per cell and one null row."""
    g = torch.Generator().manual_seed(99)
    return torch.randn(N_CELLS, SEQ_LEN, HIDDEN_DIM, generator=g), torch.randn(1, SEQ_LEN, HIDDEN_DIM, generator=g)


@pytest.fixture
def make_plan(cell_embeddings: tuple[torch.Tensor, torch.Tensor]) -> Callable[[Sequence[int]], ConditioningPlan]:
    """``make_plan(indices)``: a plan whose sample k is conditioned on cell ``indices[k]``."""
    cond, uncond = cell_embeddings

    def make(indices: Sequence[int]) -> ConditioningPlan:
        idx = list(indices)
        return ConditioningPlan(cond=cond[idx], uncond=uncond, cells=tuple(f"cell{i}" for i in idx))

    return make


@pytest.fixture(scope="module")
def engines() -> dict[str, Any]:
    """``{"torch", "onnxruntime"}`` engines over the shared tiny bundle (tests/export/shared.py; D = 16, S = 4)."""
    from fairsample.engines import load_engine
    from tests.export.shared import load_ort, tiny_bundle

    return {"torch": load_engine(tiny_bundle()), "onnxruntime": load_ort()}
