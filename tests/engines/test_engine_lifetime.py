"""Lifetime and memory (ENGINES.md §2.3 rule 6, §9): memory report, close(), context manager."""

from __future__ import annotations

import re

import pytest
import torch

from fairsample.core.errors import EngineLoadError
from fairsample.engines import MemoryReport, TorchEngine
from fairsample.engines.torch_engine import _CLOSED


def test_memory_counts_parameters_and_buffers(engine: TorchEngine) -> None:
    unet = engine.unet
    expected = sum(t.numel() * t.element_size() for t in [*unet.parameters(), *unet.buffers()])
    report = engine.memory()
    assert report == MemoryReport(weights_bytes=expected, activations_bytes=0, device="cpu")
    assert report.total_bytes == expected > 0


def test_bfloat16_halves_the_weight_bytes(make_unet, engine: TorchEngine) -> None:
    half = TorchEngine(make_unet(), prediction_type="epsilon", dtype=torch.bfloat16)
    assert half.memory().weights_bytes * 2 == engine.memory().weights_bytes


def test_context_manager_closes(make_unet, inputs) -> None:
    with TorchEngine(make_unet(), prediction_type="epsilon") as engine:
        engine(*inputs)
    with pytest.raises(EngineLoadError, match=re.escape(_CLOSED)):
        engine(*inputs)
    with pytest.raises(EngineLoadError, match=re.escape(_CLOSED)):
        engine.memory()
    engine.close()
