"""Named diffusers schedulers built from a model bundle's scheduler config (METHODS.md §4).

The update rule is always a diffusers scheduler; none is hand-written (STYLE.md §0). The bundle's config supplies
the noise schedule and ``prediction_type``; the name picks the algorithm.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Mapping
from typing import Any

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from fairsample.core.errors import ConfigError

SCHEDULERS: dict[str, type[SchedulerMixin]] = {
    "ddim": DDIMScheduler,
    "ddpm": DDPMScheduler,
    "pndm": PNDMScheduler,
    "euler": EulerDiscreteScheduler,
    "dpmsolver++": DPMSolverMultistepScheduler,
    "dpmsolver++3m": DPMSolverMultistepScheduler,
    "unipc": UniPCMultistepScheduler,
    "deis": DEISMultistepScheduler,
}
"""Scheduler name -> diffusers class; the names the CLI and configs accept. ``dpmsolver++`` is DPM-Solver++ 2M
(second order, multistep), ``dpmsolver++3m`` its third-order form, ``unipc`` UniPC (bh2), ``deis`` DEIS (order 2):
the few-step solvers the quality-per-second benchmark compares (issue #15)."""

SPACINGS: dict[str, dict[str, Any]] = {
    "trailing": {"timestep_spacing": "trailing"},
    "karras": {"use_karras_sigmas": True},
}
"""Spacing suffix -> diffusers config overrides. ``-trailing`` starts sampling at the last training timestep (t = 999)
instead of ``leading``'s 1000 − 1000/S (Lin et al. 2024, §3.3); ``-karras`` spaces the solver's noise levels as Karras
et al. (2022) do. Same update rule, other time points (issue #15, second round)."""

_SPACED: dict[str, tuple[str, ...]] = {
    "trailing": ("ddim", "euler", "dpmsolver++", "dpmsolver++3m", "unipc", "deis"),
    "karras": ("euler", "dpmsolver++", "dpmsolver++3m", "unipc", "deis"),
}

SCHEDULER_NAMES: tuple[str, ...] = (
    *SCHEDULERS,
    *(f"{base}-{spacing}" for spacing, bases in _SPACED.items() for base in bases),
)
"""Every name :func:`make_scheduler` accepts: the :data:`SCHEDULERS` and ``<name>-trailing`` / ``<name>-karras``
where the diffusers class has the option (DDIM has no Karras sigmas; DDPM and PNDM take neither here)."""

_UNKNOWN_SCHEDULER = "`scheduler` must be one of {names}, got {name!r}."
_BAD_CONFIG = "`base_config` must be a mapping (the bundle's scheduler config), got {type_name}."
_BAD_STEPS = "`num_inference_steps` must be a positive int, got {value!r}."

_OVERRIDES: dict[str, dict[str, Any]] = {
    "dpmsolver++": {"algorithm_type": "dpmsolver++"},
    "dpmsolver++3m": {"algorithm_type": "dpmsolver++", "solver_order": 3},
}

_TEMPLATES: dict[tuple[type, str], SchedulerMixin] = {}
_TEMPLATES_MAX = 64
_TEMPLATES_LOCK = threading.Lock()


def _from_template(cls: type[SchedulerMixin], config: Mapping[str, Any]) -> SchedulerMixin:
    """``cls.from_config(config)`` as a deep copy of a cached, never-used instance.

    diffusers' ``from_config`` costs ~3 ms for DDIM (a 1000-step beta table built in Python plus signature
    inspection) and a sampling call needs three fresh schedulers, so it was ~10 ms of the ~14 ms per-call overhead of
    a 10-step B = 1 run; a deep copy of the pristine instance is ~0.5 ms and gives the same state.
    """
    key = (cls, json.dumps(dict(config), sort_keys=True, default=repr))
    with _TEMPLATES_LOCK:
        template = _TEMPLATES.get(key)
    if template is None:
        template = cls.from_config(dict(config))
        with _TEMPLATES_LOCK:
            if len(_TEMPLATES) >= _TEMPLATES_MAX:
                _TEMPLATES.clear()
            _TEMPLATES[key] = template
    return copy.deepcopy(template)


def fresh_scheduler(scheduler: SchedulerMixin) -> SchedulerMixin:
    """A new, unused scheduler of ``scheduler``'s class and config, as ``type(scheduler).from_config(
    scheduler.config)`` gives (no timesteps set, no step state), built from a cached template.

    Example:
        >>> s = make_scheduler("ddim", {"num_train_timesteps": 1000})
        >>> s.set_timesteps(10)
        >>> f = fresh_scheduler(s)
        >>> f is not s, f.num_inference_steps is None, f.config == s.config
        (True, True, True)
    """
    return _from_template(type(scheduler), scheduler.config)


def split_scheduler_name(name: str) -> tuple[str, str | None]:
    """``"deis-trailing"`` -> ``("deis", "trailing")``; a plain name -> ``(name, None)``.

    Raises:
        ConfigError: ``name`` is not in :data:`SCHEDULER_NAMES` (the message lists them).

    Example:
        >>> split_scheduler_name("dpmsolver++3m-karras"), split_scheduler_name("ddim")
        (('dpmsolver++3m', 'karras'), ('ddim', None))
    """
    if name not in SCHEDULER_NAMES:
        raise ConfigError(_UNKNOWN_SCHEDULER.format(names=list(SCHEDULER_NAMES), name=name))
    base, _, spacing = name.rpartition("-")
    return (base, spacing) if base and spacing in SPACINGS else (name, None)


def make_scheduler(name: str, base_config: Mapping[str, Any]) -> SchedulerMixin:
    """Build the named scheduler from a bundle's scheduler config, keeping its schedule and ``prediction_type``.

    Keys the target class does not know (e.g. ``clip_sample`` for Euler) are ignored by diffusers' ``from_config``.

    Args:
        name: one of :data:`SCHEDULER_NAMES`: a :data:`SCHEDULERS` name (``"ddim"``, ``"ddpm"``, ``"pndm"``,
            ``"euler"``, ``"dpmsolver++"``, ``"dpmsolver++3m"``, ``"unipc"``, ``"deis"``), optionally with a
            :data:`SPACINGS` suffix (``"deis-trailing"``, ``"dpmsolver++-karras"``) that overrides the bundle's
            timestep spacing.
        base_config: the bundle's scheduler config (any diffusers scheduler's ``.config`` or its JSON dict).

    Returns:
        A new scheduler instance; ``"dpmsolver++"`` sets ``algorithm_type="dpmsolver++"``, ``"dpmsolver++3m"``
        also ``solver_order=3``; ``-trailing`` sets ``timestep_spacing="trailing"``, ``-karras``
        ``use_karras_sigmas=True``.

    Raises:
        ConfigError: unknown ``name`` (the message lists the names) or a non-mapping ``base_config``.

    Example:
        >>> s = make_scheduler("dpmsolver++", {"num_train_timesteps": 1000, "prediction_type": "v_prediction"})
        >>> type(s).__name__, s.config.algorithm_type, s.config.prediction_type
        ('DPMSolverMultistepScheduler', 'dpmsolver++', 'v_prediction')
        >>> t = make_scheduler("ddim-trailing", {"num_train_timesteps": 1000})
        >>> t.set_timesteps(4)
        >>> t.timesteps.tolist()
        [999, 749, 499, 249]
    """
    base, spacing = split_scheduler_name(name)
    if not isinstance(base_config, Mapping):
        raise ConfigError(_BAD_CONFIG.format(type_name=type(base_config).__name__))
    config = {k: v for k, v in base_config.items() if k not in ("_class_name", "_diffusers_version")}
    overrides = {**_OVERRIDES.get(base, {}), **SPACINGS.get(spacing or "", {})}
    return _from_template(SCHEDULERS[base], {**config, **overrides})


_REPEATED = (
    "`scheduler` {cls}{how} gives repeated timesteps at {n} steps on this model's noise schedule ({timesteps}); "
    "diffusers cannot step it. Use the '-trailing' variant or the plain scheduler name, or another step count."
)


def set_timesteps_checked(scheduler: SchedulerMixin, num_inference_steps: int, device: Any = None) -> None:
    """``scheduler.set_timesteps(num_inference_steps, device=device)``, refusing a Karras-σ schedule with repeated
    timesteps.

    Karras σ spacing over a schedule whose σ_max is huge (a cosine schedule: ᾱ ≈ 0 at t = 999, σ_max ≈ 10³) puts
    most steps at the top and rounds several to the same integer timestep (``dpmsolver++-karras`` at 6 steps on
    the embedded model: 998, 998, 998, 992, 837, 0); the multistep schedulers then index past their σ table. That is a
    clear :class:`ConfigError` here instead of an ``IndexError`` mid-sampling.

    Raises:
        ConfigError: the timesteps have repeats (the message names the scheduler and the timesteps).

    Example:
        >>> s = make_scheduler("dpmsolver++-karras", {"beta_schedule": "squaredcos_cap_v2"})
        >>> set_timesteps_checked(s, 6)
        Traceback (most recent call last):
        ...
        fairsample.core.errors.ConfigError: `scheduler` DPMSolverMultistepScheduler with Karras sigmas gives ...
    """
    if device is None:
        scheduler.set_timesteps(num_inference_steps)
    else:
        scheduler.set_timesteps(num_inference_steps, device=device)
    t = scheduler.timesteps
    # PNDM repeats timesteps by design (its PLMS warm-up); only σ-spaced schedules break on repeats
    if getattr(scheduler.config, "use_karras_sigmas", False) and len(set(t.tolist())) < len(t):
        shown = [round(float(v), 2) for v in t.tolist()]
        raise ConfigError(
            _REPEATED.format(
                cls=type(scheduler).__name__, how=" with Karras sigmas", n=num_inference_steps, timesteps=shown
            )
        )


def init_noise_sigma(scheduler: SchedulerMixin, num_inference_steps: int) -> float:
    """The factor x_T must be scaled by for ``num_inference_steps`` steps (the caller's scheduler is not touched).

    Euler's value depends on the inference timesteps, so it is read from a fresh copy after ``set_timesteps``, as
    diffusers pipelines do; it is 1.0 for DDIM, DDPM, PNDM and DPM-Solver++.

    Args:
        scheduler: any diffusers scheduler.
        num_inference_steps: the step count the sampler will use.

    Returns:
        ``init_noise_sigma`` as a Python float.

    Raises:
        ConfigError: ``num_inference_steps`` is not a positive int, or the schedule repeats timesteps
            (:func:`set_timesteps_checked`).

    Example:
        >>> init_noise_sigma(make_scheduler("ddim", {}), 10)
        1.0
    """
    if not (isinstance(num_inference_steps, int) and not isinstance(num_inference_steps, bool)):
        raise ConfigError(_BAD_STEPS.format(value=num_inference_steps))
    if num_inference_steps < 1:
        raise ConfigError(_BAD_STEPS.format(value=num_inference_steps))
    fresh = fresh_scheduler(scheduler)
    set_timesteps_checked(fresh, num_inference_steps)
    return float(fresh.init_noise_sigma)
