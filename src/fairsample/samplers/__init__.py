"""Samplers: plain functions over ``(engine, scheduler, latents, plan, *, generator, ...)`` (STYLE.md rule 1).

:data:`SAMPLERS` maps the names the CLI and configs accept to the functions; :func:`get_sampler` looks one up.
"""

from __future__ import annotations

from fairsample.core.errors import ConfigError
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
from fairsample.samplers.perturbed import Perturbation, sample_fairdiffusion_perturbed
from fairsample.samplers.schedulers import (
    SCHEDULER_NAMES,
    SCHEDULERS,
    SPACINGS,
    fresh_scheduler,
    init_noise_sigma,
    make_scheduler,
    split_scheduler_name,
)
from fairsample.samplers.switch import sample_attribute_switch, sample_mixing, switch_index, switched_cells
from fairsample.samplers.tau import TauResult, search_tau

__all__ = [
    "SAMPLERS",
    "SCHEDULERS",
    "SCHEDULER_NAMES",
    "SPACINGS",
    "ConditioningPlan",
    "GuidanceScale",
    "Perturbation",
    "SamplerFn",
    "StepCallback",
    "StepInfo",
    "TauResult",
    "fresh_scheduler",
    "get_sampler",
    "guided_prediction",
    "init_noise_sigma",
    "initial_latents",
    "make_generators",
    "make_scheduler",
    "split_scheduler_name",
    "sample_attribute_switch",
    "sample_conditional",
    "sample_fairdiffusion_perturbed",
    "sample_mixing",
    "search_tau",
    "switch_index",
    "switched_cells",
]

SAMPLERS: dict[str, SamplerFn] = {
    "conditional": sample_conditional,
    "attribute_switch": sample_attribute_switch,
    "mixing": sample_mixing,
    "fairdiffusion_perturbed": sample_fairdiffusion_perturbed,
}
"""Sampler name -> sampler function."""

METHOD_STATUS: dict[str, str] = {
    "conditional": "reference",
    "attribute_switch": "reference",
    "mixing": "reference",
    "fairdiffusion_perturbed": "project-extension",
}
"""Sampler name -> ``method_status`` recorded in every output (METHODS.md §4.3)."""

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
