"""Output ownership (ENGINES.md §2.3 rule 2): ``out=`` receives the result; the return value is caller-owned."""

from __future__ import annotations

import re

import pytest
import torch

from fairsample.core.engine_spec import _BAD_OUT
from fairsample.core.errors import ConfigError
from fairsample.engines import TorchEngine


def test_out_receives_the_result(engine: TorchEngine, inputs) -> None:
    sample, timestep, ehs = inputs
    expected = engine(sample, timestep, ehs)
    out = torch.full_like(expected, float("nan"))
    got = engine(sample, timestep, ehs, out=out)
    assert got is out
    assert torch.equal(out, expected)


def test_out_may_alias_sample_when_the_caller_opts_in(engine: TorchEngine, inputs) -> None:
    sample, timestep, ehs = inputs
    expected = engine(sample, timestep, ehs)
    buffer = sample.clone()
    engine(buffer, timestep, ehs, out=buffer)
    assert torch.equal(buffer, expected)


def test_result_survives_the_next_call(engine: TorchEngine, inputs) -> None:
    sample, timestep, ehs = inputs
    first = engine(sample, timestep, ehs)
    snapshot = first.clone()
    engine(sample * 2, timestep, ehs)
    assert torch.equal(first, snapshot)


def test_inputs_are_not_modified(engine: TorchEngine, inputs) -> None:
    sample, timestep, ehs = inputs
    copies = [sample.clone(), timestep.clone(), ehs.clone()]
    engine(sample, timestep, ehs)
    assert all(torch.equal(a, b) for a, b in zip(copies, (sample, timestep, ehs), strict=True))


@pytest.mark.parametrize(
    ("out", "got"),
    [
        (torch.empty(2, 3, 8, 4), "torch.float32 [2, 3, 8, 4] on cpu"),
        (torch.empty(2, 3, 8, 8, dtype=torch.float64), "torch.float64 [2, 3, 8, 8] on cpu"),
        ([0.0], "list"),
    ],
)
def test_bad_out_is_rejected(engine: TorchEngine, inputs, out, got) -> None:
    msg = _BAD_OUT.format(expected=[2, 3, 8, 8], device="cpu", got=got)
    with pytest.raises(ConfigError, match=re.escape(msg)):
        engine(*inputs, out=out)
