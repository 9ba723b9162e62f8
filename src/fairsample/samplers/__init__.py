"""Samplers: plain functions over ``(engine, scheduler, latents, plan, *, generator, ...)`` (STYLE.md rule 1).

:data:`SAMPLERS` maps the names the CLI and configs accept to the functions; :func:`get_sampler` looks one up.
"""

from __future__ import annotations

from fairsample.errors import ConfigError
from fairsample.samplers.base import (
    ConditioningPlan,
    SamplerFn,
    StepCallback,
    StepInfo,
    initial_latents,
    make_generators,
)
from fairsample.samplers.conditional import sample_conditional
from fairsample.samplers.guidance import GuidanceScale, guided_prediction
from fairsample.samplers.schedulers import SCHEDULERS, init_noise_sigma, make_scheduler

__all__ = [
    "SAMPLERS",
    "SCHEDULERS",
    "ConditioningPlan",
    "GuidanceScale",
    "SamplerFn",
    "StepCallback",
    "StepInfo",
    "get_sampler",
    "guided_prediction",
    "init_noise_sigma",
    "initial_latents",
    "make_generators",
    "make_scheduler",
    "sample_conditional",
]

SAMPLERS: dict[str, SamplerFn] = {"conditional": sample_conditional}
"""Sampler name -> sampler function."""

_UNKNOWN_SAMPLER = "`sampler` must be one of {names}, got {name!r}."


def get_sampler(name: str) -> SamplerFn:
    """The sampler function registered under ``name``.

    Args:
        name: a key of :data:`SAMPLERS`, e.g. ``"conditional"``.

    Returns:
        The sampler function.

    Raises:
        ConfigError: unknown ``name``; the message lists the sorted names.

    Example:
        >>> get_sampler("conditional").__name__
        'sample_conditional'
    """
    if name not in SAMPLERS:
        raise ConfigError(_UNKNOWN_SAMPLER.format(names=sorted(SAMPLERS), name=name))
    return SAMPLERS[name]
