"""Numerics (ENGINES.md §2.3 rule 5): same inputs give bit-identical outputs; the debug mode catches NaN/Inf."""

from __future__ import annotations

import pytest
import torch

from fairsample.core.errors import ValidationFailed
from fairsample.engines import TorchEngine


def test_repeated_calls_are_bit_exact(engine: TorchEngine, inputs) -> None:
    first = engine(*inputs)
    for _ in range(3):
        assert torch.equal(engine(*inputs), first)


def test_two_engines_over_equal_weights_agree_bitwise(make_unet, inputs) -> None:
    a = TorchEngine(make_unet(seed=3), prediction_type="epsilon")
    b = TorchEngine(make_unet(seed=3), prediction_type="epsilon")
    assert torch.equal(a(*inputs), b(*inputs))


def test_output_is_finite_float32(engine: TorchEngine, inputs) -> None:
    out = engine(*inputs)
    assert out.dtype == torch.float32
    assert out.shape == (2, 3, 8, 8)
    assert torch.isfinite(out).all()


def test_check_finite_raises_on_nan(make_unet, inputs) -> None:
    engine = TorchEngine(make_unet(), prediction_type="epsilon", check_finite=True)
    sample, timestep, ehs = inputs
    bad = sample.clone()
    bad[1] = float("nan")
    engine(sample, timestep, ehs)
    with pytest.raises(ValidationFailed, match=r"NaN/Inf at timestep\(s\) \[10\.5\]"):
        engine(bad, timestep, ehs)


def test_bfloat16_engine_keeps_a_float32_boundary(make_unet, inputs) -> None:
    ref = TorchEngine(make_unet(), prediction_type="epsilon")(*inputs)
    engine = TorchEngine(make_unet(), prediction_type="epsilon", dtype=torch.bfloat16)
    out = engine(*inputs)
    assert engine.spec.precision == "bf16"
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=0.1, rtol=0.1)
