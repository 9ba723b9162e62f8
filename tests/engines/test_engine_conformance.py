"""The ENGINES.md §2.3 contract on every available backend (torch, and onnxruntime when installed)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from fairsample.core.engine_spec import _BAD_OUT, _BAD_SHAPE
from fairsample.core.errors import ConfigError, EngineLoadError
from fairsample.engines import Engine, MemoryReport
from fairsample.export.validate import GATES, compare
from tests.export.shared import HIDDEN_DIM, SEQ_LEN, load_ort, tiny_bundle

BACKENDS = [
    "torch",
    pytest.param(
        "onnxruntime",
        marks=pytest.mark.skipif(
            __import__("importlib").util.find_spec("onnxruntime") is None, reason="onnxruntime not installed"
        ),
    ),
]


def _make(backend: str):
    if backend == "torch":
        from fairsample.engines import load_engine

        return load_engine(tiny_bundle(), "torch", seq_len=SEQ_LEN)
    return load_ort()


@pytest.fixture(params=BACKENDS)
def any_engine(request):
    engine = _make(request.param)
    yield engine
    engine.close()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1234)
    return (
        torch.randn(2, 3, 8, 8, generator=g),
        torch.tensor([999.0, 10.5]),
        torch.randn(2, SEQ_LEN, HIDDEN_DIM, generator=g),
    )


def test_protocol_and_spec(any_engine) -> None:
    assert isinstance(any_engine, Engine)
    assert any_engine.device == torch.device("cpu") and "dynamic_shapes" in any_engine.capabilities
    assert (any_engine.spec.in_channels, any_engine.spec.hidden_dim, any_engine.spec.seq_len) == (
        3,
        HIDDEN_DIM,
        SEQ_LEN,
    )
    assert any_engine.manifest["backend"] == any_engine.backend


def test_numpy_and_other_dtypes_are_cast_once(any_engine, batch) -> None:
    x, t, e = batch
    ref = any_engine(x, t, e)
    assert torch.equal(any_engine(x.numpy(), t.numpy(), e.numpy()), ref)
    assert torch.equal(any_engine(x.double(), t.double(), e.double()), ref)


@pytest.mark.parametrize("timestep", [500, 500.0, np.float32(500.0), torch.tensor(500.0), torch.tensor([500])])
def test_scalar_timestep_is_broadcast(any_engine, batch, timestep) -> None:
    x, _, e = batch
    assert torch.equal(any_engine(x, timestep, e), any_engine(x, torch.full((2,), 500.0), e))


def test_out_ownership_and_aliasing(any_engine, batch) -> None:
    x, t, e = batch
    first = any_engine(x, t, e)
    snapshot = first.clone()
    any_engine(x * 2, t, e)
    assert torch.equal(first, snapshot)
    out = torch.full_like(first, float("nan"))
    assert any_engine(x, t, e, out=out) is out and torch.equal(out, first)
    buffer = x.clone()
    any_engine(buffer, t, e, out=buffer)
    assert torch.equal(buffer, first)
    msg = _BAD_OUT.format(expected=[2, 3, 8, 8], device="cpu", got="torch.float64 [2, 3, 8, 8] on cpu")
    with pytest.raises(ConfigError, match=re.escape(msg)):
        any_engine(x, t, e, out=torch.empty(2, 3, 8, 8, dtype=torch.float64))


def test_shape_errors_are_one_line(any_engine) -> None:
    msg = _BAD_SHAPE.format(
        name="encoder_hidden_states", got=[1, SEQ_LEN, 32], sample="[N, 3, H, W]", ehs=f"[N, {SEQ_LEN}, {HIDDEN_DIM}]"
    )
    with pytest.raises(ConfigError, match=re.escape(msg)):
        any_engine(torch.zeros(1, 3, 8, 8), 1.0, torch.zeros(1, SEQ_LEN, 32))


def test_repeatable_and_finite(any_engine, batch) -> None:
    first = any_engine(*batch)
    assert all(torch.equal(any_engine(*batch), first) for _ in range(3))
    assert first.dtype == torch.float32 and torch.isfinite(first).all()


@pytest.mark.parametrize(("n", "h", "w"), [(1, 8, 8), (3, 12, 20), (2, 16, 8)])
def test_dynamic_shapes_match_torch_within_the_fp32_gate(any_engine, n, h, w) -> None:
    g = torch.Generator().manual_seed(n * h * w)
    x, t, e = (
        torch.randn(n, 3, h, w, generator=g),
        torch.linspace(1, 999, n),
        torch.randn(n, SEQ_LEN, HIDDEN_DIM, generator=g),
    )
    ref = _make("torch")(x, t, e)
    assert any_engine.supports(n, h, w)
    assert GATES["fp32"].failure(compare(any_engine(x, t, e), ref)) is None


def test_memory_and_close(any_engine, batch) -> None:
    report = any_engine.memory()
    assert isinstance(report, MemoryReport) and report.weights_bytes > 100_000
    with any_engine as engine:
        engine(*batch)
    with pytest.raises(EngineLoadError):
        engine(*batch)
    engine.close()
