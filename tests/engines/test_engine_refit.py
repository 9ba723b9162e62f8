"""Refit (ENGINES.md §8): the full weight set is loaded strictly, validated first, and A -> B -> A is exact."""

from __future__ import annotations

import re

import pytest
import torch

from fairsample.core.errors import ConfigError, ValidationFailed
from fairsample.engines import TorchEngine
from fairsample.engines.torch_engine import _REFIT_MISMATCH, _REFIT_NONFINITE


def test_refit_a_b_a_restores_outputs_bitwise(make_unet, inputs) -> None:
    engine = TorchEngine(make_unet(seed=0), prediction_type="epsilon")
    weights_a = {k: v.clone() for k, v in engine.unet.state_dict().items()}
    weights_b = make_unet(seed=1).state_dict()
    out_a = engine(*inputs)

    report_b = engine.refit(weights_b)
    out_b = engine(*inputs)
    report_a = engine.refit(weights_a)

    assert not torch.equal(out_a, out_b)
    assert torch.equal(engine(*inputs), out_a)
    assert torch.equal(out_b, TorchEngine(make_unet(seed=1), prediction_type="epsilon")(*inputs))
    assert report_b["passed"] and report_a["passed"]
    assert report_b["tensors"] == len(weights_a)
    assert report_b["changed_tensors"] > 0
    assert engine.refit(weights_a)["changed_tensors"] == 0


def test_refit_accepts_other_dtypes(make_unet, inputs) -> None:
    engine = TorchEngine(make_unet(seed=0), prediction_type="epsilon")
    double = {k: v.double() for k, v in make_unet(seed=1).state_dict().items()}
    engine.refit(double)
    assert engine.unet.dtype == torch.float32
    assert torch.equal(engine(*inputs), TorchEngine(make_unet(seed=1), prediction_type="epsilon")(*inputs))


def test_missing_and_unexpected_keys_are_rejected_atomically(make_unet, inputs) -> None:
    engine = TorchEngine(make_unet(seed=0), prediction_type="epsilon")
    before = engine(*inputs)
    weights = dict(make_unet(seed=1).state_dict())
    first = next(iter(weights))
    del weights[first]
    weights["extra.weight"] = torch.zeros(1)
    msg = _REFIT_MISMATCH.format(
        missing=1, first_missing=first, unexpected=1, first_unexpected="extra.weight", shape=0, first_shape=None
    )
    with pytest.raises(ConfigError, match=re.escape(msg)):
        engine.refit(weights)
    assert torch.equal(engine(*inputs), before)


def test_wrong_shapes_are_rejected_before_loading(make_unet, inputs) -> None:
    engine = TorchEngine(make_unet(seed=0), prediction_type="epsilon")
    before = engine(*inputs)
    weights = dict(make_unet(seed=1).state_dict())
    weights["conv_out.bias"] = torch.zeros(4)
    with pytest.raises(ConfigError, match=r"1 with a wrong shape \(first: conv_out.bias\)"):
        engine.refit(weights)
    assert torch.equal(engine(*inputs), before)


def test_nonfinite_weights_are_rejected(make_unet, inputs) -> None:
    engine = TorchEngine(make_unet(seed=0), prediction_type="epsilon")
    before = engine(*inputs)
    weights = {k: v.clone() for k, v in make_unet(seed=1).state_dict().items()}
    weights["conv_in.weight"][0, 0, 0, 0] = float("inf")
    with pytest.raises(ValidationFailed, match=re.escape(_REFIT_NONFINITE.format(count=1, first="conv_in.weight"))):
        engine.refit(weights)
    assert torch.equal(engine(*inputs), before)
