"""One conformance suite for every sampler (issue #6 §7): shape, determinism per seed, batch-size invariance, and
torch ↔ onnxruntime agreement, on the tiny test U-Net."""

from __future__ import annotations

import pytest
import torch

from fairsample.data.schema import CellKey
from fairsample.samplers import (
    SAMPLERS,
    ConditioningPlan,
    Perturbation,
    initial_latents,
    make_generators,
    make_scheduler,
)
from tests.export.shared import HIDDEN_DIM, SEQ_LEN, load_ort, tiny_bundle

SEEDS = list(range(6))
TONES = ["light", "medium", "dark"]


def _cell(seed: int) -> CellKey:
    return CellKey((("tone", TONES[seed % 3]),), str(seed % 2))


def _rows(seeds, offset: int) -> torch.Tensor:
    """One seeded conditioning row per sample (depends on the sample only)."""
    return torch.stack(
        [torch.randn(SEQ_LEN, HIDDEN_DIM, generator=torch.Generator().manual_seed(s + offset)) for s in seeds]
    )


def _extra(name: str, seeds) -> dict:
    if name in ("attribute_switch", "mixing"):
        s1 = ConditioningPlan(
            cond=_rows(seeds, 1000), uncond=torch.zeros(1, SEQ_LEN, HIDDEN_DIM), cells=tuple(_cell(s) for s in seeds)
        )
        return {"switch_plan": s1, "tau": 500.0} if name == "attribute_switch" else {"switch_plan": s1}
    if name == "fairdiffusion_perturbed":
        return {"perturbation": Perturbation(guidance={"tone": {"dark": 1.0}}, temperature={"tone": {"light": 0.1}})}
    return {}


def _generate(engine, name: str, batch_size: int) -> torch.Tensor:
    sched = make_scheduler("ddim", {"num_train_timesteps": 1000, "prediction_type": "epsilon"})
    out = []
    for start in range(0, len(SEEDS), batch_size):
        seeds = SEEDS[start : start + batch_size]
        gens = make_generators(seeds)
        x = initial_latents(gens, (3, 8, 8))
        plan = ConditioningPlan(
            cond=_rows(seeds, 0), uncond=torch.zeros(1, SEQ_LEN, HIDDEN_DIM), cells=tuple(_cell(s) for s in seeds)
        )
        out.append(
            SAMPLERS[name](
                engine,
                sched,
                x,
                plan,
                num_inference_steps=3,
                guidance_scale=2.0,
                generator=gens,
                **_extra(name, seeds),
            )
        )
    return torch.cat(out)


@pytest.fixture(scope="module")
def engines():
    from fairsample.engines import load_engine

    return {"torch": load_engine(tiny_bundle()), "onnxruntime": load_ort()}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_conformance(engines, name: str) -> None:
    ref = _generate(engines["torch"], name, batch_size=len(SEEDS))
    assert ref.shape == (len(SEEDS), 3, 8, 8) and ref.dtype == torch.float32 and torch.isfinite(ref).all()
    assert torch.equal(_generate(engines["torch"], name, batch_size=len(SEEDS)), ref)  # deterministic per seed
    for bs in (1, 4):  # batch-size invariance (torch engine is batch-invariant; chunks of 4 and 2)
        assert torch.equal(_generate(engines["torch"], name, batch_size=bs), ref), f"{name}: batch {bs}"
    ort = _generate(engines["onnxruntime"], name, batch_size=len(SEEDS))
    assert torch.equal(_generate(engines["onnxruntime"], name, batch_size=1), ort)  # ORT is batch-invariant too
    pixels = lambda x: ((x / 2 + 0.5).clamp(0, 1) * 255).round()  # noqa: E731
    assert (pixels(ort) - pixels(ref)).abs().max() <= 2  # torch <-> onnxruntime within 2/255
