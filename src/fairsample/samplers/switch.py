"""``attribute_switch`` and the ``mixing`` baseline (Choi, Park et al.; METHODS.md §4.2).

Attribute switching conditions each sample on its requested cell s0 while the scheduler timestep t ≥ τ and on the
switched cell s1 (same label, another value of one sensitive attribute) for t < τ. Only the conditional half of the
CFG batch switches; the ∅ rows stay. Both cells' embeddings are cached before the loop, so the engine graph and the
number of engine calls are those of ``conditional``. τ is in training-timestep units: τ = 0 never switches, τ ≥ T
switches from the first step. On a sampling schedule t_0 > t_1 > … the first step on s1 is
:func:`switch_index` (τ, timesteps): the index of the first t_i < τ — the same rule whatever schedule τ was found on,
so a τ* searched on a fine schedule maps onto any number of sampling steps (:func:`switch_step`). The mixing baseline
conditions every step on ½(c(s0) + c(s1)).

The output's cell label is the *requested initial* s0 (METHODS.md §5.11: BER is computed against s0).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import Tensor

from fairsample.core.engine_spec import Engine
from fairsample.core.errors import ConfigError
from fairsample.data.schema import CellKey
from fairsample.samplers.base import ConditioningPlan, StepCallback
from fairsample.samplers.conditional import run_guided_loop
from fairsample.samplers.guidance import GuidanceScale

_BAD_TAU = "`tau` must be a number in [0, {t}] (training timesteps), got {value!r}; e.g. tau=600."
_BAD_ATTRIBUTE = "`attribute` {value!r} is not a sensitive attribute of the model; its attributes are {known}."
_BAD_TARGET = "`to` value {value!r} is not a value of {attribute!r}; its values are {known}."
_NO_OTHER = "attribute {attribute!r} has a single value {value!r}; there is nothing to switch to."
_NEED_TARGET = (
    "attribute {attribute!r} has {n} values {known}; give `to` (a value, a map like 'light:dark,dark:light', or "
    "'uniform')."
)
_SAME_VALUE = "`to` maps {value!r} to itself for attribute {attribute!r}; a switch needs another value."


def check_tau(tau: Any, num_train_timesteps: int) -> float:
    """A validated τ in ``[0, T]`` (training-timestep units).

    Example:
        >>> check_tau(600, 1000)
        600.0
    """
    if isinstance(tau, bool) or not isinstance(tau, int | float) or not 0 <= float(tau) <= num_train_timesteps:
        raise ConfigError(_BAD_TAU.format(t=num_train_timesteps, value=tau))
    return float(tau)


def switch_index(tau: float, timesteps: Sequence[float] | Tensor) -> int:
    """The index of the first sampling step conditioned on s1: the first timestep ``< tau``.

    :func:`sample_attribute_switch` conditions step i on s0 while ``timesteps[i] >= tau`` and on s1 once
    ``timesteps[i] < tau``; timesteps descend, so steps ``0 … k−1`` run on s0 and ``k …`` on s1 with
    ``k = switch_index(tau, timesteps)`` (``k = 0``: s1 throughout; ``k = len(timesteps)``: never switches).

    Args:
        tau: switching time in training timesteps.
        timesteps: a sampling schedule, descending (``scheduler.timesteps`` after ``set_timesteps``).

    Returns:
        ``k`` in ``[0, len(timesteps)]``.

    Example:
        >>> switch_index(480, range(990, -1, -10)), switch_index(480, range(900, -1, -100))  # 100 and 10 DDIM steps
        (52, 5)
        >>> switch_index(930, range(900, -1, -100)), switch_index(0, [900, 0])
        (0, 2)
    """
    ts = timesteps.tolist() if isinstance(timesteps, Tensor) else list(timesteps)
    return next((i for i, t in enumerate(ts) if float(t) < float(tau)), len(ts))


def switch_step(tau: float, scheduler: SchedulerMixin, num_inference_steps: int) -> int:
    """:func:`switch_index` of ``tau`` on ``scheduler``'s schedule of ``num_inference_steps`` steps.

    The scheduler is not mutated (a fresh copy sets its timesteps).

    Example:
        >>> from fairsample.samplers.schedulers import make_scheduler
        >>> ddim = make_scheduler("ddim", {"num_train_timesteps": 1000})
        >>> [switch_step(480, ddim, n) for n in (10, 25, 50, 100)]
        [5, 13, 26, 52]
    """
    from fairsample.samplers.schedulers import fresh_scheduler, set_timesteps_checked

    sched = fresh_scheduler(scheduler)
    set_timesteps_checked(sched, int(num_inference_steps))
    return switch_index(tau, sched.timesteps)


def parse_target(to: str | Mapping[str, str] | None) -> str | dict[str, str] | None:
    """``"dark"`` → ``"dark"``; ``"light:dark,dark:light"`` → a map; ``"uniform"`` stays; None stays.

    Example:
        >>> parse_target("light:dark,dark:medium")
        {'light': 'dark', 'dark': 'medium'}
    """
    if to is None or isinstance(to, Mapping):
        return None if to is None else {str(k): str(v) for k, v in to.items()}
    if ":" in to:
        pairs = [item.split(":", 1) for item in to.split(",") if item.strip()]
        return {k.strip(): v.strip() for k, v in pairs}
    return to


def _seed_choice(seed: int, options: Sequence[str]) -> str:
    """A deterministic choice from ``options`` keyed by the image seed (batch-independent)."""
    digest = hashlib.blake2b(f"switch:{seed}".encode(), digest_size=8).digest()
    return options[int.from_bytes(digest, "little") % len(options)]


def switched_cells(
    cells: Sequence[CellKey],
    attribute: str,
    values: Sequence[str],
    to: str | Mapping[str, str] | None,
    seeds: Sequence[int],
) -> list[CellKey]:
    """The switched cell s1 of every requested cell s0: same label, another value of ``attribute``.

    Args:
        cells: the requested cells s0.
        attribute: the sensitive attribute to switch.
        values: every value of ``attribute`` the model was trained on.
        to: a target value (every s0 switches to it; samples already there go to the uniform choice among the
            others), a ``{from: to}`` map, ``"uniform"`` (another value chosen per image seed), or None (the other
            value of a binary attribute).
        seeds: the image seeds (for ``"uniform"``).

    Returns:
        One switched cell per requested cell.

    Raises:
        ConfigError: unknown attribute or value, a single-valued attribute, a map sending a value to itself, or a
            multi-valued attribute without ``to``.

    Example:
        >>> c = CellKey((("tone", "light"),), "3")
        >>> switched_cells([c], "tone", ["light", "dark"], None, [0])[0].to_text()
        'tone=dark,label=3'
    """
    values = [str(v) for v in values]
    target = parse_target(to)
    out = []
    for cell, seed in zip(cells, seeds, strict=True):
        attrs = dict(cell.groups)
        if attribute not in attrs:
            raise ConfigError(_BAD_ATTRIBUTE.format(value=attribute, known=sorted(attrs)))
        s0 = attrs[attribute]
        others = [v for v in values if v != s0]
        if not others:
            raise ConfigError(_NO_OTHER.format(attribute=attribute, value=s0))
        if target is None:
            if len(values) != 2:
                raise ConfigError(_NEED_TARGET.format(attribute=attribute, n=len(values), known=values))
            s1 = others[0]
        elif isinstance(target, dict):
            s1 = target.get(s0, "")
            if not s1:
                s1 = _seed_choice(int(seed), others)
            elif s1 == s0:
                raise ConfigError(_SAME_VALUE.format(value=s0, attribute=attribute))
        elif target == "uniform":
            s1 = _seed_choice(int(seed), others)
        else:
            s1 = target if target != s0 else _seed_choice(int(seed), others)
        if s1 not in values:
            raise ConfigError(_BAD_TARGET.format(value=s1, attribute=attribute, known=values))
        out.append(cell.replace(**{attribute: s1}))
    return out


def switch_pairs(
    sources: Iterable[str], attribute: str, values: Sequence[str], to: str | Mapping[str, str] | None
) -> list[tuple[str, str]]:
    """Every ordered pair (s0, s1) that :func:`switched_cells` can produce for cells whose value is in ``sources``.

    Args:
        sources: the values s0 of the requested cells (repeats are ignored; order kept).
        attribute: the sensitive attribute switched (for messages).
        values: every value of the attribute the model was trained on.
        to: as in :func:`switched_cells`.

    Returns:
        ``[(s0, s1), ...]``: one pair per s0 for a fixed target, every other value for ``"uniform"`` (and for a
        value the map or the target leaves open, where :func:`switched_cells` draws uniformly per seed).

    Raises:
        ConfigError: as :func:`switched_cells`.

    Example:
        >>> switch_pairs(["light", "dark"], "tone", ["dark", "light", "medium"], "dark")
        [('light', 'dark'), ('dark', 'light'), ('dark', 'medium')]
        >>> switch_pairs(["light"], "tone", ["dark", "light"], None)
        [('light', 'dark')]
    """
    values = [str(v) for v in values]
    target = parse_target(to)
    out = []
    for s0 in dict.fromkeys(str(v) for v in sources):
        others = [v for v in values if v != s0]
        if not others:
            raise ConfigError(_NO_OTHER.format(attribute=attribute, value=s0))
        if target is None:
            if len(values) != 2:
                raise ConfigError(_NEED_TARGET.format(attribute=attribute, n=len(values), known=values))
            chosen = others
        elif isinstance(target, dict):
            if target.get(s0) == s0:
                raise ConfigError(_SAME_VALUE.format(value=s0, attribute=attribute))
            chosen = [target[s0]] if target.get(s0) else others
        elif target == "uniform":
            chosen = others
        else:
            chosen = [target] if target != s0 else others
        for s1 in chosen:
            if s1 not in values:
                raise ConfigError(_BAD_TARGET.format(value=s1, attribute=attribute, known=values))
            out.append((s0, s1))
    return out


@torch.no_grad()
def sample_attribute_switch(
    engine: Engine,
    scheduler: SchedulerMixin,
    latents: Tensor,
    plan: ConditioningPlan,
    *,
    switch_plan: ConditioningPlan,
    tau: float,
    num_inference_steps: int = 50,
    guidance_scale: GuidanceScale = 7.5,
    generator: torch.Generator | list[torch.Generator] | None = None,
    callback: StepCallback | None = None,
    progress: bool = False,
) -> Tensor:
    """Attribute-switching sampler: condition on ``plan`` for t ≥ τ, on ``switch_plan`` for t < τ.

    Args:
        engine, scheduler, latents, plan, num_inference_steps, guidance_scale, generator, callback, progress: as
            :func:`~fairsample.samplers.conditional.sample_conditional` (``plan`` holds the s0 rows).
        switch_plan: the s1 rows (same B; its ∅ rows are ignored — the plan's ∅ rows are used throughout).
        tau: switching time in training timesteps, in ``[0, T]``: step i uses s1 iff its timestep t_i < τ, i.e.
            from step :func:`switch_index` (τ, timesteps) on (:func:`switch_step` for a scheduler + step count).

    Returns:
        (B, C, H, W) float32 final latents.

    Raises:
        ConfigError: τ outside [0, T], a switch plan of another batch size, or anything ``conditional`` rejects.

    Example:
        >>> import torch
        >>> from types import SimpleNamespace
        >>> from fairsample.engines import load_engine
        >>> from fairsample.models.builtin import build_unet
        >>> from fairsample.samplers import ConditioningPlan, initial_latents, make_generators, make_scheduler
        >>> engine = load_engine(SimpleNamespace(unet=build_unet("test", sample_size=8, cross_attention_dim=8),
        ...                                      prediction_type="epsilon"))
        >>> sched = make_scheduler("ddim", {"num_train_timesteps": 1000})
        >>> p0 = ConditioningPlan(cond=torch.randn(1, 2, 8), uncond=torch.zeros(1, 2, 8), cells=("s0",))
        >>> p1 = ConditioningPlan(cond=torch.randn(1, 2, 8), uncond=torch.zeros(1, 2, 8), cells=("s1",))
        >>> x = initial_latents(make_generators([0]), (3, 8, 8))
        >>> sample_attribute_switch(engine, sched, x, p0, switch_plan=p1, tau=500, num_inference_steps=2).shape
        torch.Size([1, 3, 8, 8])
    """
    tau = check_tau(tau, int(scheduler.config.num_train_timesteps))
    merged = ConditioningPlan(cond=switch_plan.cond, uncond=plan.uncond, cells=switch_plan.cells)
    return run_guided_loop(
        engine,
        scheduler,
        latents,
        plan,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        generator=generator,
        callback=callback,
        progress=progress,
        switch=(merged, tau),
    )


@torch.no_grad()
def sample_mixing(
    engine: Engine,
    scheduler: SchedulerMixin,
    latents: Tensor,
    plan: ConditioningPlan,
    *,
    switch_plan: ConditioningPlan,
    num_inference_steps: int = 50,
    guidance_scale: GuidanceScale = 7.5,
    generator: torch.Generator | list[torch.Generator] | None = None,
    callback: StepCallback | None = None,
    progress: bool = False,
    tau: float | None = None,
) -> Tensor:
    """Mixing-embedding baseline: condition every step on ½(c(s0) + c(s1)) (``tau`` is accepted and ignored).

    Example:
        >>> import torch
        >>> p0 = ConditioningPlan(cond=torch.ones(1, 2, 4), uncond=torch.zeros(1, 2, 4), cells=("a",))
        >>> p1 = ConditioningPlan(cond=torch.zeros(1, 2, 4), uncond=torch.zeros(1, 2, 4), cells=("b",))
        >>> mixed_plan(p0, p1).cond[0, 0, 0].item()
        0.5
    """
    return run_guided_loop(
        engine,
        scheduler,
        latents,
        mixed_plan(plan, switch_plan),
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        generator=generator,
        callback=callback,
        progress=progress,
    )


def mixed_plan(plan: ConditioningPlan, switch_plan: ConditioningPlan) -> ConditioningPlan:
    """The plan conditioned on the mean of the s0 and s1 embeddings (∅ rows from ``plan``)."""
    return ConditioningPlan(
        cond=0.5 * (plan.cond + switch_plan.cond.to(plan.cond.device)), uncond=plan.uncond, cells=plan.cells
    )
