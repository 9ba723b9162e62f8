"""Shapes (ENGINES.md §2.3 rule 4): ``supports()``, profiles and the unsupported-shape error text."""

from __future__ import annotations

import re

import pytest
import torch

from fairsample.core.engine_spec import _BAD_PROFILE, _UNSUPPORTED_SHAPE
from fairsample.core.errors import ConfigError
from fairsample.engines import EngineSpec, ShapeProfile, TorchEngine, check_inputs


def test_torch_engine_supports_dynamic_shapes(engine: TorchEngine) -> None:
    assert engine.supports(1, 8, 8)
    assert engine.supports(7, 16, 24)
    assert not engine.supports(0, 8, 8)


@pytest.mark.parametrize(("h", "w"), [(8, 8), (16, 8), (12, 20)])
def test_torch_engine_runs_other_spatial_sizes(engine: TorchEngine, h: int, w: int) -> None:
    out = engine(torch.zeros(1, 3, h, w), 5.0, torch.zeros(1, 4, 16))
    assert out.shape == (1, 3, h, w)


def test_profiles_bound_supported_shapes() -> None:
    profiles = (
        ShapeProfile(min=(1, 8, 8), opt=(2, 8, 8), max=(4, 16, 16)),
        ShapeProfile((2, 32, 32), (4, 32, 32), (8, 64, 64)),
    )
    spec = EngineSpec(3, 3, 8, 4, 16, "epsilon", "fp16", profiles)
    assert spec.supports(4, 16, 16) and spec.supports(8, 64, 32)
    assert not spec.supports(5, 16, 16)
    assert not spec.supports(1, 32, 32)


def test_unsupported_shape_error_lists_the_ranges() -> None:
    spec = EngineSpec(3, 3, 8, 4, 16, "epsilon", profiles=(ShapeProfile((1, 8, 8), (2, 8, 8), (4, 16, 16)),))
    msg = _UNSUPPORTED_SHAPE.format(n=6, h=8, w=8, ranges="[N 1-4, H 8-16, W 8-16]")
    with pytest.raises(ConfigError, match=re.escape(msg)):
        check_inputs(torch.zeros(6, 3, 8, 8), 1.0, torch.zeros(6, 4, 16), spec=spec, device=torch.device("cpu"))


def test_profile_bounds_are_validated() -> None:
    msg = _BAD_PROFILE.format(min=(1, 8, 8), opt=(8, 8, 8), max=(4, 16, 16))
    with pytest.raises(ConfigError, match=re.escape(msg)):
        ShapeProfile(min=(1, 8, 8), opt=(8, 8, 8), max=(4, 16, 16))


@pytest.mark.parametrize(
    ("field", "value"), [("in_channels", 0), ("hidden_dim", 2.5), ("prediction_type", "eps"), ("precision", "int8")]
)
def test_spec_fields_are_validated(field: str, value: object) -> None:
    kwargs: dict[str, object] = dict(
        in_channels=3, out_channels=3, sample_size=8, seq_len=4, hidden_dim=16, prediction_type="epsilon"
    )
    kwargs[field] = value
    with pytest.raises(ConfigError, match=f"`{field}`"):
        EngineSpec(**kwargs)  # type: ignore[arg-type]
