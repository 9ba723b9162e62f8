"""Batch invariance of the U-Net forward, at the engine layer (the one home of this property for engines): sample i
is bitwise identical whatever the batch it runs in, on the torch and the onnxruntime engine.

On CPU the plain batched torch forward differs by ~1e-6 across batch sizes (oneDNN conv2d and small-M GEMMs pick their
blocking from N); ``batch_invariant=True`` (the default) runs those ops per sample, which makes rows bitwise equal.
The sampler layer (final latents of every sampler) is tests/samplers/test_sampler_batch_invariance.py.
"""

from __future__ import annotations

import pytest
import torch

from fairsample.engines import TorchEngine
from tests.export.shared import HIDDEN_DIM, SEQ_LEN, load_ort

N = 8


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return torch.randn(N, 3, 16, 16, generator=g), torch.linspace(1.0, 999.0, N), torch.randn(N, 4, 16, generator=g)


def _run_in_batches(engine: TorchEngine, batch, size: int) -> torch.Tensor:
    x, t, e = batch
    return torch.cat([engine(x[i : i + size], t[i : i + size], e[i : i + size]) for i in range(0, N, size)])


@pytest.mark.parametrize("size", [3, 8])
def test_rows_are_bitwise_equal_across_batch_sizes(make_unet, batch, size: int) -> None:
    engine = TorchEngine(make_unet(sample_size=16), prediction_type="epsilon")
    alone = _run_in_batches(engine, batch, 1)
    assert torch.equal(_run_in_batches(engine, batch, size), alone)


def test_plain_forward_agrees_to_float_tolerance(make_unet, batch) -> None:
    unet = make_unet(sample_size=16)
    invariant = TorchEngine(unet, prediction_type="epsilon")(*batch)
    plain = TorchEngine(unet, prediction_type="epsilon", batch_invariant=False)(*batch)
    torch.testing.assert_close(plain, invariant, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("batch_invariant", [False, True])
def test_onnxruntime_rows_are_bitwise_equal_across_batch_sizes(batch_invariant: bool) -> None:
    engine = load_ort(batch_invariant=batch_invariant)
    g = torch.Generator().manual_seed(7)
    x, t, e = (
        torch.randn(N, 3, 16, 16, generator=g),
        torch.linspace(1, 999, N),
        torch.randn(N, SEQ_LEN, HIDDEN_DIM, generator=g),
    )
    alone = torch.cat([engine(x[i : i + 1], t[i : i + 1], e[i : i + 1]) for i in range(N)])
    for size in (3, 8):
        got = torch.cat([engine(x[i : i + size], t[i : i + size], e[i : i + size]) for i in range(0, N, size)])
        assert torch.equal(got, alone)
