"""τ search for attribute switching (Choi, Park et al., ``tau_searching.ipynb``; METHODS.md §4.2).

Two trajectories start from the same x_T: x⁽⁰⁾ conditioned on s0 and x⁽¹⁾ on s1 (both with CFG, so the *guided*
prediction is compared; v-models are converted to ε with ε = √ᾱ_t·v + √(1−ᾱ_t)·x_t). At each step
d_i = w_i·(ε̂⁽⁰⁾_i − ε̂⁽¹⁾_i). For τ on a grid, Before(τ) = Σ_{t_i ≥ τ} d_i and After(τ) = Σ_{t_i < τ} d_i, and
J(τ) = ‖After − Before‖; τ* = argmin J splits the accumulated attribute drift evenly between s0 and s1.

Search schedule [project, issue #12]: the search runs its own deterministic DDIM of ``search_steps`` steps
(default 100; the notebook used 1,000), built from the bundle's training schedule and independent of the steps used
for sampling later: τ is a training-timestep quantity, and :func:`~fairsample.samplers.switch.switch_index` maps τ*
onto any sampling schedule. J(τ) only changes where τ crosses a search timestep, so on a 10-step search it is
constant over 100-timestep bins (ties go to the smallest τ) and τ* says no more than "after the first step"; below
``MIN_SEARCH_STEPS`` = 100 (or T, if smaller) the search refuses unless ``allow_coarse=True`` (smoke tests). The
default τ grid is the search schedule's spacing (T / search_steps: 10 at 100 steps), so every grid point is a
distinct step boundary.
Only the two trajectories of every (s0, s1) row are run, packed into one engine call per step. With a cosine
schedule (β_t → 0.999 as t → T) the drift near T carries much of J, so τ* can keep moving between 100 and 1,000
search steps (embedded model, tone, one trajectory pair per label: τ* = 490, 704, 820 at 100, 250, 1,000 steps);
use ``search_steps=1000`` where the time is affordable.

Weighting and norm: the step weight is the Riemann weight w_i = β_{t_i}·(t_i − t_{i+1}) (``weighting="riemann"``,
default: an unweighted per-step sum shifts τ* with the step spacing) or the official β_{t_i} (``"official"``, exact
at 1,000 steps; on a uniformly spaced schedule the two differ by a constant factor except at the last step, so
their τ* agree); ``norm="official"`` takes the L2 norm over the batch dimension then the mean over (C, H, W),
``"per_sample"`` the norm over (C, H, W) then the mean over the batch. ``method_status`` is ``"reference"`` only for
the notebook's setting (official weighting and norm, ``search_steps`` = T, grid 10), else ``"project-extension"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from diffusers import DDIMScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import Tensor

from fairsample.core.engine_spec import Engine
from fairsample.core.errors import ConfigError
from fairsample.samplers.base import ConditioningPlan
from fairsample.samplers.guidance import guided_prediction
from fairsample.samplers.switch import switch_index

Norm = Literal["official", "per_sample"]
Weighting = Literal["riemann", "official"]
#: fewest search steps without ``allow_coarse=True`` (J(τ) is constant between search timesteps)
MIN_SEARCH_STEPS = 100
_BAD_GRID = "`grid` must be an int in [1, {t}], got {value!r}; e.g. 10 (the official grid) or None (search spacing)."
_BAD_NORM = "`norm` must be 'official' or 'per_sample', got {value!r}."
_BAD_WEIGHTING = "`weighting` must be 'riemann' or 'official', got {value!r}."
_BAD_STEPS = "`search_steps` must be an int in [2, {t}], got {value!r}; e.g. 100."
_COARSE = (
    "`search_steps` must be >= {min} for a meaningful τ*, got {value}: J(τ) is constant between search timesteps "
    "(over {width}-timestep bins here); use search_steps={min} or more (pass allow_coarse=True only for smoke tests)."
)
_BATCH_MISMATCH = "`plan_s1` has B={got} rows but `plan_s0` has B={b}; pair every s0 row with its s1 row."


@dataclass(frozen=True)
class TauResult:
    """The J(τ) curve and its minimiser.

    Attributes:
        tau_star: argmin_τ J(τ), in training timesteps (switch when t < τ*).
        step_index: the index of the first search step with t < τ* (:func:`~fairsample.samplers.switch.switch_index`
            on ``timesteps``): steps ``0 … step_index − 1`` of the search schedule run on s0.
        search_steps: DDIM steps of the search schedule.
        taus: the τ grid.
        objective: J(τ) for every grid point.
        timesteps: the search schedule's timesteps, descending (``search_steps`` ints).
        settings: scheduler (``"ddim"``), guidance, grid, norm, weighting, batch size and ``method_status``.
    """

    tau_star: int
    step_index: int
    search_steps: int
    taus: list[int]
    objective: list[float]
    timesteps: list[int]
    settings: dict[str, Any]

    def switch_step(self, timesteps: Sequence[float] | Tensor) -> int:
        """:func:`~fairsample.samplers.switch.switch_index` of τ* on a sampling schedule's ``timesteps``."""
        return switch_index(self.tau_star, timesteps)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return asdict(self)


def search_schedule(
    scheduler: SchedulerMixin,
    search_steps: int,
    prediction_type: str | None = None,
    device: str | torch.device | None = None,
) -> DDIMScheduler:
    """The deterministic DDIM of the τ search: ``scheduler``'s training schedule, ``search_steps`` timesteps set.

    Example:
        >>> from fairsample.samplers.schedulers import make_scheduler
        >>> ddim = search_schedule(make_scheduler("ddpm", {"num_train_timesteps": 1000}), 100)
        >>> [int(t) for t in ddim.timesteps[:3]], len(ddim.timesteps)
        ([990, 980, 970], 100)
    """
    config = dict(scheduler.config)
    if prediction_type is not None:
        config["prediction_type"] = prediction_type
    ddim = DDIMScheduler.from_config(config)
    ddim.set_timesteps(int(search_steps), device=device)
    return ddim


def _as_epsilon(output: Tensor, x: Tensor, t: Tensor, alphas_cumprod: Tensor, prediction_type: str) -> Tensor:
    if prediction_type == "epsilon":
        return output
    if prediction_type != "v_prediction":
        raise ConfigError(f"τ search supports epsilon and v_prediction models, not {prediction_type!r}.")
    a = alphas_cumprod[int(t)].to(output.device)
    return a.sqrt() * output + (1 - a).sqrt() * x


def check_search(
    num_train_timesteps: int,
    search_steps: int,
    grid: int | None,
    norm: str,
    weighting: str,
    allow_coarse: bool = False,
) -> int:
    """Validate the search settings; returns the τ grid spacing (``None`` → T // search_steps).

    Example:
        >>> check_search(1000, 100, None, "official", "riemann")
        10
    """
    num_t = int(num_train_timesteps)
    if isinstance(search_steps, bool) or not isinstance(search_steps, int) or not 2 <= search_steps <= num_t:
        raise ConfigError(_BAD_STEPS.format(t=num_t, value=search_steps))
    floor = min(MIN_SEARCH_STEPS, num_t)  # a model with T < 100 can at best search every timestep
    if search_steps < floor and not allow_coarse:
        raise ConfigError(_COARSE.format(min=floor, value=search_steps, width=num_t // search_steps))
    if grid is None:
        grid = max(num_t // search_steps, 1)
    if isinstance(grid, bool) or not isinstance(grid, int) or not 1 <= grid <= num_t:
        raise ConfigError(_BAD_GRID.format(t=num_t, value=grid))
    if norm not in ("official", "per_sample"):
        raise ConfigError(_BAD_NORM.format(value=norm))
    if weighting not in ("riemann", "official"):
        raise ConfigError(_BAD_WEIGHTING.format(value=weighting))
    return grid


@torch.no_grad()
def search_tau(
    engine: Engine,
    scheduler: SchedulerMixin,
    latents: Tensor,
    plan_s0: ConditioningPlan,
    plan_s1: ConditioningPlan,
    *,
    search_steps: int = MIN_SEARCH_STEPS,
    guidance_scale: float = 7.5,
    grid: int | None = None,
    norm: Norm = "official",
    weighting: Weighting = "riemann",
    allow_coarse: bool = False,
) -> TauResult:
    """J(τ) and τ* for switching ``plan_s0`` → ``plan_s1`` rows from the same initial ``latents``.

    Args:
        engine: the U-Net engine (both trajectories run in one packed call per step).
        scheduler: the bundle's training scheduler (its β schedule and T; the search DDIM is built from its config).
        latents: (B, C, H, W) x_T (DDIM: ``init_noise_sigma`` = 1).
        plan_s0: the s0 rows; plan_s1: the s1 rows (same B).
        search_steps: DDIM steps of the search schedule (≥ min(``MIN_SEARCH_STEPS`` = 100, T) unless
            ``allow_coarse``), independent of the sampling steps; 1,000 is the notebook's setting.
        guidance_scale: CFG w of both trajectories (1 = unguided).
        grid: τ grid spacing in training timesteps (τ ∈ {0, grid, 2·grid, …} below T); None: the search schedule's
            spacing T // search_steps, so every grid point is a distinct step boundary.
        norm: ``"official"`` or ``"per_sample"`` (module docstring).
        weighting: ``"riemann"`` or ``"official"`` (module docstring).
        allow_coarse: permit ``search_steps`` < 100 (smoke tests; J(τ) is then constant over wide bins).

    Returns:
        :class:`TauResult` (τ*, its step index on the search schedule, the J(τ) curve).

    Raises:
        ConfigError: bad grid/norm/weighting/search_steps, a coarse search without ``allow_coarse``, mismatched
            plans, or an unsupported prediction type.

    Example:
        >>> import torch
        >>> from types import SimpleNamespace
        >>> from fairsample.engines import load_engine
        >>> from fairsample.models.builtin import build_unet
        >>> from fairsample.samplers import make_scheduler
        >>> engine = load_engine(SimpleNamespace(unet=build_unet("test", sample_size=8, cross_attention_dim=8),
        ...                                      prediction_type="epsilon"))
        >>> p0 = ConditioningPlan(cond=torch.randn(2, 2, 8), uncond=torch.zeros(1, 2, 8), cells=("a", "a"))
        >>> p1 = ConditioningPlan(cond=torch.randn(2, 2, 8), uncond=torch.zeros(1, 2, 8), cells=("b", "b"))
        >>> sched = make_scheduler("ddpm", {"num_train_timesteps": 1000})
        >>> r = search_tau(engine, sched, torch.randn(2, 3, 8, 8), p0, p1, guidance_scale=1.0,
        ...                search_steps=10, allow_coarse=True)  # a doctest-sized search; use >= 100 steps
        >>> r.search_steps, r.taus[:3], r.step_index == sum(t >= r.tau_star for t in r.timesteps)
        (10, [0, 100, 200], True)
    """
    num_t = int(scheduler.config.num_train_timesteps)
    grid = check_search(num_t, search_steps, grid, norm, weighting, allow_coarse)
    b = plan_s0.batch_size
    if plan_s1.batch_size != b:
        raise ConfigError(_BATCH_MISMATCH.format(got=plan_s1.batch_size, b=b))
    prediction_type = engine.spec.prediction_type
    dev = engine.device
    ddim = search_schedule(scheduler, search_steps, prediction_type, dev)
    both = ConditioningPlan(
        cond=torch.cat([plan_s0.cond, plan_s1.cond.to(plan_s0.cond.device)]).to(dev),
        uncond=plan_s0.uncond.to(dev),
        cells=(*plan_s0.cells, *plan_s1.cells),
    )
    x = torch.cat([latents, latents]).to(device=dev, dtype=torch.float32)
    betas, acp = ddim.betas, ddim.alphas_cumprod
    timesteps = [int(t) for t in ddim.timesteps]
    drifts = []
    for i, t in enumerate(ddim.timesteps):
        # 1. scale input
        model_input = ddim.scale_model_input(x, t)
        # 2. engine call + 3. guidance (both trajectories in one packed call)
        out = guided_prediction(engine, model_input, t, both, float(guidance_scale))
        # 4. drift d_i = w_i·(ε̂⁽⁰⁾ − ε̂⁽¹⁾)
        eps = _as_epsilon(out, model_input, t, acp, prediction_type)
        nxt = timesteps[i + 1] if i + 1 < len(timesteps) else 0
        w = float(betas[timesteps[i]]) * (max(timesteps[i] - nxt, 1) if weighting == "riemann" else 1.0)
        drifts.append(w * (eps[:b] - eps[b:]).double().cpu())
        # 5. scheduler step
        x = ddim.step(out, t, x).prev_sample
    # t descending, so Before(τ) is the sum over the first k = switch_index(τ) steps: a prefix sum
    prefix = torch.cat([torch.zeros_like(drifts[0])[None], torch.stack(drifts).cumsum(0)])  # (steps + 1, B, C, H, W)
    taus = list(range(0, num_t, grid))
    objective = []
    for tau in taus:
        diff = prefix[-1] - 2 * prefix[switch_index(tau, timesteps)]  # After(τ) − Before(τ)
        value = diff.norm(dim=0).mean() if norm == "official" else diff.flatten(1).norm(dim=1).mean()
        objective.append(float(value))
    best = min(range(len(taus)), key=lambda k: (objective[k], taus[k]))
    official = weighting == "official" and norm == "official" and search_steps == num_t and grid == 10
    settings = {
        "scheduler": "ddim",
        "search_steps": search_steps,
        "guidance_scale": float(guidance_scale),
        "grid": grid,
        "norm": norm,
        "weighting": weighting,
        "batch_size": b,
        "prediction_type": prediction_type,
        "num_train_timesteps": num_t,
        "coarse": search_steps < min(MIN_SEARCH_STEPS, num_t),
        "method_status": "reference" if official else "project-extension",
    }
    tau_star = taus[best]
    return TauResult(
        tau_star=tau_star,
        step_index=switch_index(tau_star, timesteps),
        search_steps=search_steps,
        taus=taus,
        objective=objective,
        timesteps=timesteps,
        settings=settings,
    )
