"""One conformance suite for every sampler (issue #6 §7): shape, dtype, determinism per seed and torch ↔ onnxruntime
agreement, on the tiny test U-Net. Batch-size invariance of every sampler lives in test_sampler_batch_invariance.py."""

from __future__ import annotations

import pytest
import torch

from fairsample.samplers import SAMPLERS

from .every_sampler import SEEDS, generate


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_conformance(engines, name: str) -> None:
    ref = generate(engines["torch"], name, batch_size=len(SEEDS))
    assert ref.shape == (len(SEEDS), 3, 8, 8) and ref.dtype == torch.float32 and torch.isfinite(ref).all()
    assert torch.equal(generate(engines["torch"], name, batch_size=len(SEEDS)), ref)  # deterministic per seed
    ort = generate(engines["onnxruntime"], name, batch_size=len(SEEDS))
    pixels = lambda x: ((x / 2 + 0.5).clamp(0, 1) * 255).round()  # noqa: E731
    assert (pixels(ort) - pixels(ref)).abs().max() <= 2  # torch <-> onnxruntime within 2/255
