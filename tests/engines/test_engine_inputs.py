"""Boundary rules (ENGINES.md §2.3 rule 1 and §2.1): numpy on CPU, one dtype cast, timestep broadcast, shape errors."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from fairsample.core.engine_spec import _BAD_INPUT_TYPE, _BAD_SHAPE, _WRONG_DEVICE
from fairsample.core.errors import ConfigError
from fairsample.engines import EngineSpec, TorchEngine, check_inputs

from .conftest import HIDDEN_DIM

CPU = torch.device("cpu")


def test_numpy_inputs_match_torch_inputs(engine: TorchEngine, inputs) -> None:
    sample, timestep, ehs = inputs
    expected = engine(sample, timestep, ehs)
    got = engine(sample.numpy(), timestep.numpy(), ehs.numpy())
    assert torch.equal(got, expected)


def test_float64_and_float16_inputs_are_cast_once(engine: TorchEngine, inputs) -> None:
    sample, timestep, ehs = inputs
    expected = engine(sample, timestep, ehs)
    assert torch.equal(engine(sample.double(), timestep.double(), ehs.double()), expected)
    assert torch.equal(engine(sample.numpy().astype(np.float64), timestep, ehs), expected)
    half = engine(sample.half(), timestep, ehs.half())
    assert half.dtype == torch.float32
    assert torch.equal(half, engine(sample.half().float(), timestep, ehs.half().float()))


@pytest.mark.parametrize("timestep", [500, 500.0, np.float32(500.0), torch.tensor(500.0), torch.tensor([500])])
def test_scalar_timestep_is_broadcast(engine: TorchEngine, inputs, timestep) -> None:
    sample, _, ehs = inputs
    expected = engine(sample, torch.full((2,), 500.0), ehs)
    assert torch.equal(engine(sample, timestep, ehs), expected)


def test_fractional_timesteps_pass_unchanged() -> None:
    spec = EngineSpec(
        in_channels=3, out_channels=3, sample_size=8, seq_len=4, hidden_dim=16, prediction_type="epsilon"
    )
    _, t, _ = check_inputs(
        torch.zeros(2, 3, 8, 8), torch.tensor([887.7778, 0.25]), torch.zeros(2, 4, 16), spec=spec, device=CPU
    )
    assert t.dtype == torch.float32
    assert t.tolist() == [pytest.approx(887.7778), 0.25]


def test_check_inputs_returns_float32_contiguous_timestep() -> None:
    spec = EngineSpec(
        in_channels=3, out_channels=3, sample_size=8, seq_len=None, hidden_dim=16, prediction_type="epsilon"
    )
    x, t, e = check_inputs(
        np.ones((3, 3, 8, 8), dtype=np.int64), torch.tensor(7), torch.zeros(3, 5, 16), spec=spec, device=CPU
    )
    assert (x.dtype, t.dtype, e.dtype) == (torch.float32,) * 3
    assert t.shape == (3,) and t.is_contiguous()


def _shape_message(name: str, got: list[int], seq: object = "S") -> str:
    return re.escape(_BAD_SHAPE.format(name=name, got=got, sample="[N, 3, H, W]", ehs=f"[N, {seq}, {HIDDEN_DIM}]"))


@pytest.mark.parametrize(
    ("name", "sample_shape", "timestep_shape", "ehs_shape", "got"),
    [
        ("sample", (2, 4, 8, 8), (2,), (2, 4, 16), [2, 4, 8, 8]),
        ("sample", (3, 8, 8), (2,), (2, 4, 16), [3, 8, 8]),
        ("encoder_hidden_states", (2, 3, 8, 8), (2,), (2, 4, 32), [2, 4, 32]),
        ("encoder_hidden_states", (2, 3, 8, 8), (2,), (1, 4, 16), [1, 4, 16]),
        ("timestep", (2, 3, 8, 8), (3,), (2, 4, 16), [3]),
    ],
)
def test_wrong_shapes_raise_one_line_listing_expected_shapes(
    engine: TorchEngine, name, sample_shape, timestep_shape, ehs_shape, got
) -> None:
    with pytest.raises(ConfigError, match=_shape_message(name, got)) as info:
        engine(torch.zeros(sample_shape), torch.zeros(timestep_shape), torch.zeros(ehs_shape))
    assert "\n" not in str(info.value)


def test_seq_len_is_enforced_when_given(make_unet) -> None:
    engine = TorchEngine(make_unet(), prediction_type="epsilon", seq_len=4)
    with pytest.raises(ConfigError, match=_shape_message("encoder_hidden_states", [1, 5, 16], seq=4)):
        engine(torch.zeros(1, 3, 8, 8), 1.0, torch.zeros(1, 5, 16))


def test_rejects_non_tensor_inputs(engine: TorchEngine) -> None:
    msg = _BAD_INPUT_TYPE.format(name="sample", numpy=" (or numpy array)", type_name="list")
    with pytest.raises(ConfigError, match=re.escape(msg)):
        engine([[0.0]], 1.0, torch.zeros(1, 4, 16))  # type: ignore[arg-type]


def test_rejects_tensors_on_another_device(engine: TorchEngine) -> None:
    msg = _WRONG_DEVICE.format(name="sample", got="meta", device="cpu", device_str="cpu")
    with pytest.raises(ConfigError, match=re.escape(msg)):
        engine(torch.zeros(1, 3, 8, 8, device="meta"), 1.0, torch.zeros(1, 4, 16))
