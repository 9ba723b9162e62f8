"""Classifier-free guidance packing: one batched engine call per step (ENGINES.md §3).

The unconditional and conditional rows are concatenated ``[uncond; cond]`` along the batch, run in one call at
N = 2B, split, and combined on the host as ε̂ = ε_∅ + w(ε_c − ε_∅) (Ho & Salimans, 2022), with w a float or a
per-sample vector [B]. A float w == 1 needs no unconditional branch: one call at N = B on the conditional rows.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fairsample.engines.base import Engine
from fairsample.errors import ConfigError
from fairsample.samplers.base import ConditioningPlan

GuidanceScale = float | Tensor
"""A float for every sample, or a (B,) tensor with one scale per sample."""

_BAD_SCALE = "`guidance_scale` must be a finite float or a finite tensor of shape [{b}], got {got}."
_BAD_SAMPLE = "`sample` must be a (B, C, H, W) tensor with B={b} (the plan's batch size), got {got}."


def check_guidance_scale(guidance_scale: GuidanceScale, batch_size: int) -> GuidanceScale:
    """A validated guidance scale: a Python float, or a float32 (B,) tensor (0-d tensors become floats)."""
    if isinstance(guidance_scale, Tensor):
        if guidance_scale.dim() == 0:
            guidance_scale = float(guidance_scale)
        elif (
            guidance_scale.shape == (batch_size,)
            and not guidance_scale.is_complex()
            and guidance_scale.dtype != torch.bool
            and bool(torch.isfinite(guidance_scale).all())
        ):
            return guidance_scale.to(torch.float32)
        else:
            got = f"{guidance_scale.dtype} tensor {list(guidance_scale.shape)}"
            raise ConfigError(_BAD_SCALE.format(b=batch_size, got=got))
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, int | float):
        raise ConfigError(_BAD_SCALE.format(b=batch_size, got=repr(guidance_scale)))
    if not math.isfinite(guidance_scale):
        raise ConfigError(_BAD_SCALE.format(b=batch_size, got=repr(guidance_scale)))
    return float(guidance_scale)


def is_unguided(guidance_scale: GuidanceScale) -> bool:
    """True for a float scale of exactly 1: ε̂ = ε_c, so the unconditional branch is skipped."""
    return not isinstance(guidance_scale, Tensor) and float(guidance_scale) == 1.0


def guided_prediction(
    engine: Engine,
    sample: Tensor,
    timestep: Tensor | float,
    plan: ConditioningPlan,
    guidance_scale: GuidanceScale,
) -> Tensor:
    """The guided prediction ε̂ = ε_∅ + w(ε_c − ε_∅) from one packed engine call.

    Args:
        engine: any :class:`~fairsample.engines.Engine`; it must support N = 2B (or N = B when w == 1).
        sample: (B, C, H, W) float32 model input (already ``scale_model_input``-ed) on the engine's device.
        timestep: the scheduler timestep (0-d tensor or number; fractional for Euler), broadcast to every row.
        plan: B conditional rows and the null rows.
        guidance_scale: float w, or (B,) per-sample scales; a float 1.0 makes a single N = B call on ``plan.cond``.

    Returns:
        (B, C_out, H, W) float32 guided prediction, owned by the caller (never an engine buffer).

    Raises:
        ConfigError: ``sample`` does not match the plan, or a bad ``guidance_scale``.

    Example:
        >>> import torch
        >>> from types import SimpleNamespace
        >>> from fairsample.samplers.base import ConditioningPlan
        >>> class Toy:  # a toy engine: prediction = mean of the conditioning rows
        ...     spec = SimpleNamespace(out_channels=3)
        ...     def __call__(self, x, t, e, *, out=None):
        ...         y = x * 0 + e.mean(dim=(1, 2)).view(-1, 1, 1, 1)
        ...         return y if out is None else out.copy_(y)
        >>> engine = Toy()
        >>> plan = ConditioningPlan(cond=torch.ones(1, 2, 4), uncond=torch.zeros(1, 2, 4), cells=("c",))
        >>> guided_prediction(engine, torch.zeros(1, 3, 2, 2), 10.0, plan, 7.5)[0, 0, 0, 0].item()
        7.5
    """
    b = plan.batch_size
    if not (isinstance(sample, Tensor) and sample.dim() == 4 and sample.shape[0] == b):
        got = list(sample.shape) if isinstance(sample, Tensor) else type(sample).__name__
        raise ConfigError(_BAD_SAMPLE.format(b=b, got=got))
    w = check_guidance_scale(guidance_scale, b)
    t = torch.as_tensor(timestep, dtype=torch.float32, device=sample.device).reshape(1)
    if is_unguided(w):
        # 2. engine call (conditional rows only, N = B)
        out = torch.empty((b, engine.spec.out_channels, *sample.shape[2:]), dtype=torch.float32, device=sample.device)
        return engine(sample, t.expand(b), plan.cond, out=out)
    # 2. engine call ([uncond; cond], N = 2B)
    packed = engine(torch.cat([sample, sample]), t.expand(2 * b), torch.cat([plan.uncond_rows(), plan.cond]))
    eps_uncond, eps_cond = packed[:b], packed[b:]
    # 3. guidance
    scale = w.to(packed.device).view(b, 1, 1, 1) if isinstance(w, Tensor) else w
    return eps_uncond + scale * (eps_cond - eps_uncond)
