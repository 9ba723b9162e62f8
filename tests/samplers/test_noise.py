"""Seeded noise: one CPU generator per seed, so image k depends on seed k only."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from fairsample.core.errors import ConfigError
from fairsample.samplers import initial_latents, make_generators
from fairsample.samplers.base import _BAD_LATENT_SHAPE, _BAD_SEEDS, _BAD_SIGMA


def test_row_k_depends_only_on_seed_k() -> None:
    batch = initial_latents([5, 6, 7], (3, 8, 8))
    alone = [initial_latents([s], (3, 8, 8)) for s in (5, 6, 7)]
    assert torch.equal(batch, torch.cat(alone))
    assert torch.equal(initial_latents([7, 5], (3, 8, 8))[0], batch[2])


def test_matches_a_seeded_cpu_generator() -> None:
    expected = torch.randn((1, 3, 8, 8), generator=torch.Generator().manual_seed(42))
    assert torch.equal(initial_latents([42], (3, 8, 8)), expected)


def test_scales_by_init_noise_sigma_and_casts() -> None:
    base = initial_latents([1], (3, 8, 8))
    scaled = initial_latents([1], (3, 8, 8), init_noise_sigma=14.6, dtype=torch.float64)
    assert scaled.dtype == torch.float64
    assert torch.equal(scaled, (base * 14.6).double())


def test_generators_continue_their_streams() -> None:
    gens = make_generators([3, 4])
    x_t = initial_latents(gens, (3, 8, 8))
    assert torch.equal(x_t, initial_latents([3, 4], (3, 8, 8)))
    follow_up = torch.randn((1, 3, 8, 8), generator=gens[0])
    assert not torch.equal(follow_up, x_t[:1])


def test_does_not_touch_the_global_rng() -> None:
    state = torch.random.get_rng_state()
    initial_latents([0, 1], (3, 8, 8))
    make_generators([0])
    assert torch.equal(torch.random.get_rng_state(), state)


def test_numpy_int_seeds_are_accepted() -> None:
    assert torch.equal(initial_latents(list(np.arange(2)), (3, 4, 4)), initial_latents([0, 1], (3, 4, 4)))


@pytest.mark.parametrize("seeds", [[], [-1], [1.5], [True], [2**64], "12"])
def test_bad_seeds(seeds: object) -> None:
    with pytest.raises(ConfigError, match=re.escape(_BAD_SEEDS.format(value=seeds))):
        make_generators(seeds)  # type: ignore[arg-type]


def test_bad_shape_and_sigma() -> None:
    with pytest.raises(ConfigError, match=re.escape(_BAD_LATENT_SHAPE.format(value=(3, 8)))):
        initial_latents([0], (3, 8))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=re.escape(_BAD_SIGMA.format(value=0.0))):
        initial_latents([0], (3, 8, 8), init_noise_sigma=0.0)
