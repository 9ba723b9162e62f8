"""τ search for attribute switching (Choi, Park et al., ``tau_searching.ipynb``; METHODS.md §4.2).

Two trajectories start from the same x_T: x⁽⁰⁾ conditioned on s0 and x⁽¹⁾ on s1 (both with CFG, so the *guided*
prediction is compared; v-models are converted to ε with ε = √ᾱ_t·v + √(1−ᾱ_t)·x_t). At each step
d_i = w_i·(ε̂⁽⁰⁾_i − ε̂⁽¹⁾_i). For τ on a grid, Before(τ) = Σ_{t_i ≥ τ} d_i and After(τ) = Σ_{t_i < τ} d_i, and
J(τ) = ‖After − Before‖; τ* = argmin J splits the accumulated attribute drift evenly between s0 and s1.

Project decisions (labelled in the output): the search always runs a deterministic DDIM built from the bundle's
training schedule (τ is a training-timestep quantity, usable with any scheduler afterwards); the step weight is the
Riemann weight w_i = β_{t_i}·(t_i − t_{i+1}) (``weighting="riemann"``, default: an unweighted per-step sum shifts τ*
with the step spacing) or the official β_{t_i} (``"official"``, exact at 1,000 steps); ``norm="official"`` takes the
L2 norm over the batch dimension then the mean over (C, H, W), ``"per_sample"`` the norm over (C, H, W) then the mean
over the batch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from diffusers import DDIMScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import Tensor

from fairsample.engines.base import Engine
from fairsample.errors import ConfigError
from fairsample.samplers.base import ConditioningPlan
from fairsample.samplers.guidance import guided_prediction

Norm = Literal["official", "per_sample"]
Weighting = Literal["riemann", "official"]
_BAD_GRID = "`grid` must be an int in [1, {t}], got {value!r}; e.g. 10 (the official grid)."
_BAD_NORM = "`norm` must be 'official' or 'per_sample', got {value!r}."
_BAD_WEIGHTING = "`weighting` must be 'riemann' or 'official', got {value!r}."
_BATCH_MISMATCH = "`plan_s1` has B={got} rows but `plan_s0` has B={b}; pair every s0 row with its s1 row."


@dataclass(frozen=True)
class TauResult:
    """The J(τ) curve and its minimiser.

    Attributes:
        tau_star: argmin_τ J(τ), in training timesteps.
        taus: the τ grid.
        objective: J(τ) for every grid point.
        settings: steps, guidance, norm, weighting, batch size, scheduler (``"ddim"``) and ``method_status``.
    """

    tau_star: int
    taus: list[int]
    objective: list[float]
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return asdict(self)


def _as_epsilon(output: Tensor, x: Tensor, t: Tensor, alphas_cumprod: Tensor, prediction_type: str) -> Tensor:
    if prediction_type == "epsilon":
        return output
    if prediction_type != "v_prediction":
        raise ConfigError(f"τ search supports epsilon and v_prediction models, not {prediction_type!r}.")
    a = alphas_cumprod[int(t)].to(output.device)
    return a.sqrt() * output + (1 - a).sqrt() * x


@torch.no_grad()
def search_tau(
    engine: Engine,
    scheduler: SchedulerMixin,
    latents: Tensor,
    plan_s0: ConditioningPlan,
    plan_s1: ConditioningPlan,
    *,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    grid: int = 10,
    norm: Norm = "official",
    weighting: Weighting = "riemann",
) -> TauResult:
    """J(τ) and τ* for switching ``plan_s0`` → ``plan_s1`` rows from the same initial ``latents``.

    Args:
        engine: the U-Net engine (both trajectories run in one packed call per step).
        scheduler: the bundle's training scheduler (its β schedule and T; a DDIM is built from its config).
        latents: (B, C, H, W) x_T (DDIM: ``init_noise_sigma`` = 1).
        plan_s0: the s0 rows; plan_s1: the s1 rows (same B).
        num_inference_steps: DDIM steps of each trajectory.
        guidance_scale: CFG w of both trajectories (1 = unguided).
        grid: τ grid spacing in training timesteps (τ ∈ {0, grid, 2·grid, …} below T).
        norm: ``"official"`` or ``"per_sample"`` (module docstring).
        weighting: ``"riemann"`` or ``"official"`` (module docstring).

    Returns:
        :class:`TauResult`.

    Raises:
        ConfigError: bad grid/norm/weighting, mismatched plans, or an unsupported prediction type.

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
        >>> r = search_tau(engine, make_scheduler("ddpm", {}), torch.randn(2, 3, 8, 8), p0, p1,
        ...                num_inference_steps=4, guidance_scale=1.0, grid=100)
        >>> len(r.taus), 0 <= r.tau_star < 1000
        (10, True)
    """
    num_t = int(scheduler.config.num_train_timesteps)
    if isinstance(grid, bool) or not isinstance(grid, int) or not 1 <= grid <= num_t:
        raise ConfigError(_BAD_GRID.format(t=num_t, value=grid))
    if norm not in ("official", "per_sample"):
        raise ConfigError(_BAD_NORM.format(value=norm))
    if weighting not in ("riemann", "official"):
        raise ConfigError(_BAD_WEIGHTING.format(value=weighting))
    b = plan_s0.batch_size
    if plan_s1.batch_size != b:
        raise ConfigError(_BATCH_MISMATCH.format(got=plan_s1.batch_size, b=b))
    config = dict(scheduler.config)
    prediction_type = engine.spec.prediction_type
    ddim = DDIMScheduler.from_config({**config, "prediction_type": prediction_type})
    ddim.set_timesteps(num_inference_steps, device=engine.device)
    dev = engine.device
    both = ConditioningPlan(cond=torch.cat([plan_s0.cond, plan_s1.cond.to(plan_s0.cond.device)]).to(dev),
                            uncond=plan_s0.uncond.to(dev), cells=(*plan_s0.cells, *plan_s1.cells))  # fmt: skip
    x = torch.cat([latents, latents]).to(device=dev, dtype=torch.float32)
    betas, acp = ddim.betas, ddim.alphas_cumprod
    timesteps = [int(t) for t in ddim.timesteps]
    drifts = []
    for i, t in enumerate(ddim.timesteps):
        model_input = ddim.scale_model_input(x, t)
        out = guided_prediction(engine, model_input, t, both, float(guidance_scale))
        eps = _as_epsilon(out, model_input, t, acp, prediction_type)
        nxt = timesteps[i + 1] if i + 1 < len(timesteps) else 0
        w = float(betas[timesteps[i]]) * (max(timesteps[i] - nxt, 1) if weighting == "riemann" else 1.0)
        drifts.append(w * (eps[:b] - eps[b:]).double().cpu())
        x = ddim.step(out, t, x).prev_sample
    d = torch.stack(drifts)  # (steps, B, C, H, W), t descending
    t_arr = torch.tensor(timesteps)
    taus = list(range(0, num_t, grid))
    objective = []
    for tau in taus:
        after = d[t_arr < tau].sum(0)
        before = d[t_arr >= tau].sum(0)
        diff = after - before
        if norm == "official":
            value = diff.norm(dim=0).mean()
        else:
            value = diff.flatten(1).norm(dim=1).mean()
        objective.append(float(value))
    best = min(range(len(taus)), key=lambda k: (objective[k], taus[k]))
    settings = {"scheduler": "ddim", "steps": num_inference_steps, "guidance_scale": float(guidance_scale),
                "grid": grid, "norm": norm, "weighting": weighting, "batch_size": b,
                "prediction_type": prediction_type, "num_train_timesteps": num_t,
                "method_status": "reference" if weighting == "official" and norm == "official"
                else "project-extension"}  # fmt: skip
    return TauResult(tau_star=taus[best], taus=taus, objective=objective, settings=settings)
