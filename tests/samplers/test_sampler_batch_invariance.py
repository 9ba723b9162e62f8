"""Same seed -> same image whatever the batch, at the sampler layer (the one home of this property for samplers):
final latents are bitwise equal across batch sizes, for the conditional sampler under every scheduler and for every
registered sampler on the torch and onnxruntime engines.

Other layers have their own home: the engine layer (one U-Net call, rows bitwise equal across batch sizes) is
tests/engines/test_engine_batch_invariance.py; the CLI layer (PNG bytes of `fairsample generate --batch-size`) is
tests/cli/test_train_generate.py.

This is the product promise behind ``{seed:06d}.png`` (STYLE.md rule 3). It holds because (a) x_T and every step's
noise come from the sample's own generator, (b) CFG rows of a sample do not depend on other rows, and (c) the torch
engine runs conv2d and small-M GEMMs per sample (``batch_invariant=True``), removing the ~1e-6 batch-size dependence
of oneDNN/MKL that a chaotic sampler (DDIM with CFG) amplifies to visible pixel changes.
"""

from __future__ import annotations

import pytest
import torch

from fairsample.engines import TorchEngine
from fairsample.samplers import (
    SAMPLERS,
    SCHEDULERS,
    init_noise_sigma,
    initial_latents,
    make_generators,
    make_scheduler,
    sample_conditional,
)

from . import every_sampler

SEEDS = list(range(8))
STEPS = 4


def _generate(engine: TorchEngine, name: str, config, make_plan, batch_size: int, guidance_scale=7.5) -> torch.Tensor:
    scheduler = make_scheduler(name, config)
    sigma = init_noise_sigma(scheduler, STEPS)
    chunks = []
    for start in range(0, len(SEEDS), batch_size):
        seeds = SEEDS[start : start + batch_size]
        gens = make_generators(seeds)
        x_t = initial_latents(gens, (3, 8, 8), init_noise_sigma=sigma)
        plan = make_plan(seeds)
        chunks.append(
            sample_conditional(
                engine, scheduler, x_t, plan, num_inference_steps=STEPS, guidance_scale=guidance_scale, generator=gens
            )
        )
    return torch.cat(chunks)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_final_latents_are_bitwise_equal_across_batch_sizes(engine, scheduler_config, make_plan, name: str) -> None:
    alone = _generate(engine, name, scheduler_config, make_plan, batch_size=1)
    for batch_size in (3, 8):
        batched = _generate(engine, name, scheduler_config, make_plan, batch_size=batch_size)
        assert torch.equal(batched, alone), f"{name}: batch {batch_size} differs by {(batched - alone).abs().max()}"
        assert torch.equal(_to_uint8(batched), _to_uint8(alone))


def test_unguided_path_is_batch_invariant_too(engine, scheduler_config, make_plan) -> None:
    alone = _generate(engine, "ddpm", scheduler_config, make_plan, batch_size=1, guidance_scale=1.0)
    assert torch.equal(_generate(engine, "ddpm", scheduler_config, make_plan, batch_size=8, guidance_scale=1.0), alone)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_is_batch_invariant_on_torch_and_onnxruntime(engines, name: str) -> None:
    n = len(every_sampler.SEEDS)
    for backend, sizes in (("torch", (1, 4)), ("onnxruntime", (1,))):  # 4: chunks of 4 and 2
        ref = every_sampler.generate(engines[backend], name, batch_size=n)
        for bs in sizes:
            assert torch.equal(every_sampler.generate(engines[backend], name, batch_size=bs), ref), (name, backend, bs)
