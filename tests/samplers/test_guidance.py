"""CFG packing (ENGINES.md §3): one engine call at N = 2B, equal to two separate calls; w == 1 makes one N = B call."""

from __future__ import annotations

import re

import pytest
import torch

from fairsample.core.errors import ConfigError
from fairsample.engines import TorchEngine
from fairsample.samplers import guided_prediction
from fairsample.samplers.guidance import _BAD_SCALE

from .conftest import CountingEngine, build_tiny_unet

B = 3


@pytest.fixture
def sample() -> torch.Tensor:
    return torch.randn(B, 3, 8, 8, generator=torch.Generator().manual_seed(5))


def _unbatched(engine, sample, t, plan, w) -> torch.Tensor:
    """Reference: two separate engine calls, ε_∅ then ε_c, combined on the host."""
    ts = torch.full((B,), float(t))
    eps_uncond = engine(sample, ts, plan.uncond_rows().contiguous())
    eps_cond = engine(sample, ts, plan.cond)
    return eps_uncond + w * (eps_cond - eps_uncond)


def test_cfg_is_one_call_at_2b(engine: TorchEngine, make_plan, sample) -> None:
    counting = CountingEngine(engine)
    guided_prediction(counting, sample, torch.tensor(500), make_plan([0, 1, 2]), 7.5)
    assert counting.calls == [2 * B]


def test_w_equal_one_is_one_call_at_b_on_cond_rows(engine: TorchEngine, make_plan, sample) -> None:
    counting = CountingEngine(engine)
    plan = make_plan([0, 1, 2])
    got = guided_prediction(counting, sample, torch.tensor(500), plan, 1.0)
    assert counting.calls == [B]
    assert torch.equal(got, engine(sample, 500.0, plan.cond))


def test_tensor_scale_of_ones_still_packs(engine: TorchEngine, make_plan, sample) -> None:
    counting = CountingEngine(engine)
    guided_prediction(counting, sample, torch.tensor(500), make_plan([0, 1, 2]), torch.ones(B))
    assert counting.calls == [2 * B]


def test_batched_equals_unbatched_plain_engine(make_plan, sample) -> None:
    engine = TorchEngine(build_tiny_unet(), prediction_type="epsilon", batch_invariant=False)
    plan = make_plan([0, 1, 2])
    got = guided_prediction(engine, sample, torch.tensor(321), plan, 7.5)
    torch.testing.assert_close(got, _unbatched(engine, sample, 321, plan, 7.5), atol=1e-5, rtol=1e-5)


def test_batched_equals_unbatched_bitwise_with_batch_invariant_engine(engine: TorchEngine, make_plan, sample) -> None:
    plan = make_plan([0, 1, 2])
    got = guided_prediction(engine, sample, torch.tensor(321), plan, 7.5)
    assert torch.equal(got, _unbatched(engine, sample, 321, plan, 7.5))


def test_per_sample_scale_vector(engine: TorchEngine, make_plan, sample) -> None:
    scales = [0.0, 2.0, 7.5]
    got = guided_prediction(engine, sample, torch.tensor(700), make_plan([0, 1, 2]), torch.tensor(scales))
    for k, w in enumerate(scales):
        alone = guided_prediction(engine, sample[k : k + 1], torch.tensor(700), make_plan([k]), w)
        assert torch.equal(got[k : k + 1], alone)


def test_zero_scale_is_the_unconditional_prediction(engine: TorchEngine, make_plan, sample) -> None:
    plan = make_plan([0, 1, 2])
    got = guided_prediction(engine, sample, torch.tensor(700), plan, 0.0)
    assert torch.equal(got, engine(sample, 700.0, plan.uncond_rows().contiguous()))


@pytest.mark.parametrize(
    ("scale", "got"),
    [
        (torch.ones(2), "torch.float32 tensor [2]"),
        (torch.ones(B, 1), "torch.float32 tensor [3, 1]"),
        (torch.tensor([1.0, float("nan"), 1.0]), "torch.float32 tensor [3]"),
        (float("inf"), "inf"),
        ("7.5", "'7.5'"),
    ],
)
def test_bad_scales_are_rejected(engine: TorchEngine, make_plan, sample, scale: object, got: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(_BAD_SCALE.format(b=B, got=got))):
        guided_prediction(engine, sample, torch.tensor(1), make_plan([0, 1, 2]), scale)  # type: ignore[arg-type]
