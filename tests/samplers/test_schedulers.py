"""``make_scheduler``: the named diffusers scheduler from the bundle's config, prediction_type kept."""

from __future__ import annotations

import inspect
import re

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler

from fairsample.core.errors import ConfigError
from fairsample.samplers import (
    SCHEDULER_NAMES,
    SCHEDULERS,
    SPACINGS,
    fresh_scheduler,
    init_noise_sigma,
    make_scheduler,
    split_scheduler_name,
)
from fairsample.samplers.schedulers import _UNKNOWN_SCHEDULER

NAMES = sorted(SCHEDULERS)


def test_registry_names() -> None:
    assert NAMES == ["ddim", "ddpm", "deis", "dpmsolver++", "dpmsolver++3m", "euler", "pndm", "unipc"]
    multistep = make_scheduler("dpmsolver++3m", {"num_train_timesteps": 1000})
    assert (multistep.config.algorithm_type, multistep.config.solver_order) == ("dpmsolver++", 3)
    assert make_scheduler("dpmsolver++", {"num_train_timesteps": 1000}).config.solver_order == 2


@pytest.mark.parametrize("name", NAMES)
def test_builds_the_named_class_keeping_the_schedule(name: str) -> None:
    config = {"num_train_timesteps": 500, "beta_schedule": "scaled_linear", "prediction_type": "v_prediction"}
    scheduler = make_scheduler(name, config)
    assert type(scheduler) is SCHEDULERS[name]
    assert scheduler.config.num_train_timesteps == 500
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert scheduler.config.prediction_type == "v_prediction"


def test_dpmsolver_plus_plus_sets_the_algorithm() -> None:
    scheduler = make_scheduler("dpmsolver++", {"algorithm_type": "sde-dpmsolver"})
    assert isinstance(scheduler, DPMSolverMultistepScheduler)
    assert scheduler.config.algorithm_type == "dpmsolver++"


def test_accepts_another_schedulers_config() -> None:
    base = make_scheduler("ddim", {"prediction_type": "v_prediction", "clip_sample": False}).config
    euler = make_scheduler("euler", base)
    assert isinstance(euler, EulerDiscreteScheduler)
    assert euler.config.prediction_type == "v_prediction"


def test_unknown_name_lists_the_names() -> None:
    with pytest.raises(
        ConfigError, match=re.escape(_UNKNOWN_SCHEDULER.format(names=list(SCHEDULER_NAMES), name="heun"))
    ):
        make_scheduler("heun", {})


def test_init_noise_sigma_follows_set_timesteps() -> None:
    ddim = make_scheduler("ddim", {})
    euler = make_scheduler("euler", {"num_train_timesteps": 1000})
    assert init_noise_sigma(ddim, 10) == 1.0
    sigma = init_noise_sigma(euler, 10)
    assert sigma > 1.0
    assert euler.num_inference_steps is None


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_cached_instances_are_fresh_and_independent(name: str) -> None:
    """make_scheduler / fresh_scheduler come from a cached template: each call is a new, unused instance equal to
    diffusers' from_config, and stepping one never touches another."""
    config = {"num_train_timesteps": 1000, "prediction_type": "epsilon"}
    a, b = make_scheduler(name, config), make_scheduler(name, config)
    assert a is not b and a.config == b.config
    a.set_timesteps(7)
    ref = type(a).from_config(a.config)
    for s in (b, fresh_scheduler(a)):
        assert s.num_inference_steps is None and s.config == ref.config
        assert torch.equal(s.alphas_cumprod, ref.alphas_cumprod) and s.alphas_cumprod is not a.alphas_cumprod
        s.set_timesteps(7)
        assert torch.equal(s.timesteps, a.timesteps)
    x = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    t = a.timesteps[0]
    kw = {"generator": torch.Generator().manual_seed(1)} if "generator" in inspect.signature(a.step).parameters else {}
    stepped = a.step(x, t, x, **kw).prev_sample
    fresh = fresh_scheduler(a)
    fresh.set_timesteps(7)
    kw = {"generator": torch.Generator().manual_seed(1)} if kw else {}
    assert torch.equal(fresh.step(x, t, x, **kw).prev_sample, stepped)  # a's step state did not leak into the copy


VARIANTS = [n for n in SCHEDULER_NAMES if n not in SCHEDULERS]


def test_spacing_variants_are_the_supported_pairs() -> None:
    """Every base name with each spacing its diffusers class has; DDIM has no Karras sigmas, DDPM/PNDM no variants."""
    assert len(VARIANTS) == 11
    assert {split_scheduler_name(n)[1] for n in VARIANTS} == set(SPACINGS)
    for bad in ("ddim-karras", "ddpm-trailing", "pndm-karras", "deis-linspace", "deis-"):
        with pytest.raises(ConfigError, match=re.escape(f"got {bad!r}")):
            make_scheduler(bad, {})


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_overrides_only_its_spacing(name: str) -> None:
    base, spacing = split_scheduler_name(name)
    config = {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction"}
    plain, spaced = make_scheduler(base, config), make_scheduler(name, config)
    assert type(spaced) is type(plain) is SCHEDULERS[base]
    assert spaced.config.prediction_type == "v_prediction"
    for key, value in SPACINGS[spacing].items():
        assert spaced.config[key] == value
    diff = {k for k in spaced.config if not k.startswith("_") and spaced.config[k] != plain.config.get(k)}
    assert diff == set(SPACINGS[spacing])
    spaced.set_timesteps(8)
    plain.set_timesteps(8)
    assert not torch.equal(spaced.timesteps, plain.timesteps)  # other time points, same update rule
    if spacing == "trailing":
        assert int(spaced.timesteps[0]) == 999  # leading (the default here) starts at 1000 - 1000/8 = 875


def test_cli_scheduler_choices_are_the_registry() -> None:
    from fairsample.cli.common import SchedulerName

    assert [m.value for m in SchedulerName] == list(SCHEDULER_NAMES)


def test_karras_sigmas_on_a_cosine_schedule_are_refused_before_sampling():
    """σ_max of the cosine schedule is ~10^3: Karras spacing repeats integer timesteps and diffusers' multistep
    solvers would index past their σ table (IndexError mid-run); a one-line ConfigError comes first instead."""
    from fairsample.samplers.schedulers import set_timesteps_checked

    config = {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction"}
    for name in ("dpmsolver++-karras", "unipc-karras", "deis-karras"):
        with pytest.raises(ConfigError, match=r"with Karras sigmas gives repeated timesteps at 6 steps .*-trailing"):
            init_noise_sigma(make_scheduler(name, config), 6)
    ok = make_scheduler("dpmsolver++-karras", {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear"})
    set_timesteps_checked(ok, 6)  # SD's schedule (σ_max ≈ 14.6): distinct timesteps, accepted
    assert len(set(ok.timesteps.tolist())) == 6
    pndm = make_scheduler("pndm", config)
    set_timesteps_checked(pndm, 4)  # PNDM repeats timesteps by design and is not refused
